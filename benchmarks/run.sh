#!/usr/bin/env bash
# The scenario set of benchmarks/README.md: norn against the Go reference hub
# (shared/bench), same machine, interleaved. Prints figures; asserts nothing.
#
#   benchmarks/run.sh [OUTDIR]            # everything (~12 min on 2 cores)
#   ONLY="compare idle" benchmarks/run.sh # some groups
#
# Groups (ONLY, default all):
#   compare   run_compare.sh SAT=1 at SUBS=100, SUBS=1000 and SUBS=1 (REPS each)
#   asyncio   run_compare.sh at SUBS=100 with NORN_LOOP=asyncio (uvloop off)
#   pinned    run_compare.sh PIN=1 at SUBS=100 and 1000 (a core per hub, one for loadgen)
#   stalled   loadgen -subs 100 -events 60000 -lag 32 -stalled 10, both hubs
#   idle      loadgen -mode idle -subs 10000, both hubs, each freshly started
#   cli       `norn --help`, `norn emit` and `norn serve` start-up wall times
# Env: REPS (3), PIN=1 (hubs on cpu0, loadgen on cpu1), PORT (8800),
#      EMIT_PYTHONPATH (time `norn emit` from another checkout),
#      BENCH (path to shared/bench; default ../shared/bench beside the repo,
#      else /work/shared/bench). Loopback only; every step is bounded in
#      time; only processes this script started are stopped, by PID.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${BENCH:-}
for cand in "$ROOT/../shared/bench" "$ROOT/../../shared/bench" /work/shared/bench; do
  [ -z "$BENCH" ] && [ -x "$cand/run_compare.sh" ] && BENCH=$cand
done
[ -n "$BENCH" ] || { echo "run.sh: cannot find shared/bench (set BENCH=)" >&2; exit 2; }
OUTDIR=${1:-$ROOT/benchmarks/results/$(date +%Y%m%d-%H%M%S)}
REPS=${REPS:-3}
PORT=${PORT:-8800}
REF_PORT=${REF_PORT:-18860}
ONLY=${ONLY:-compare asyncio pinned stalled idle cli}
WORK=${NORN_BENCH_DIR:-/tmp/norn-bench}
LG=$WORK/bin/loadgen
PY=${PYTHON:-python3}
mkdir -p "$OUTDIR"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

HARD=$(ulimit -Hn)
if [ "$HARD" = unlimited ] || [ "$HARD" -ge 20000 ]; then ulimit -n 20000; else ulimit -n "$HARD"; fi

HUB_TS=(); LG_TS=()
if [ "${PIN:-0}" = 1 ]; then HUB_TS=(taskset -c 0); LG_TS=(taskset -c 1); fi

NORN_PID=; REF_PID=
stop() { # pid
  if [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; then kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; fi
}
cleanup() { stop "$NORN_PID"; stop "$REF_PID"; }
trap cleanup EXIT INT TERM

wait_health() { # url pid
  for _ in $(seq 100); do
    curl -fsS --max-time 1 "$1/healthz" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

start_norn() { # [env assignments...]
  stop "$NORN_PID"
  env "$@" "${HUB_TS[@]}" "$PY" -m norn_cli serve --port "$PORT" 2>>"$OUTDIR/norn.log" &
  NORN_PID=$!
  wait_health "http://127.0.0.1:$PORT" "$NORN_PID" || { echo "run.sh: norn serve did not start" >&2; exit 2; }
}

start_ref() {
  stop "$REF_PID"
  "${HUB_TS[@]}" "$WORK/bin/refhub" -addr "127.0.0.1:$REF_PORT" 2>>"$OUTDIR/refhub.log" &
  REF_PID=$!
  wait_health "http://127.0.0.1:$REF_PORT" "$REF_PID" || { echo "run.sh: refhub did not start" >&2; exit 2; }
}

loadgen() { # label url pid args... -> one JSON line appended to $OUTDIR/loadgen.jsonl
  local label=$1 url=$2 pid=$3; shift 3
  local line
  line=$(timeout 300 "${LG_TS[@]}" "$LG" -url "$url" -pid "$pid" -label "$label" "$@" 2>/dev/null | grep '^{' | tail -n 1) || true
  [ -n "$line" ] || line="{\"label\":\"$label\",\"errors\":[\"loadgen gave no result\"]}"
  echo "$line" | tee -a "$OUTDIR/loadgen.jsonl" | cut -c1-200 >&2
}

compare() { # name env... : one run_compare.sh against a fresh norn hub
  local name=$1; shift
  start_norn "$@"
  echo "== $name" >&2
  env "${COMPARE_ENV[@]}" CAND_PID="$NORN_PID" REF_PORT=$REF_PORT OUT="$OUTDIR/$name.jsonl" \
    timeout 1500 "$BENCH/run_compare.sh" "ws://127.0.0.1:$PORT" "$REPS" 2>&1 | tee "$OUTDIR/$name.txt" | tail -n 4 >&2
  stop "$NORN_PID"; NORN_PID=
}

# run_compare.sh builds loadgen and refhub (and installs Go) on first use.
[ -x "$LG" ] && [ -x "$WORK/bin/refhub" ] || {
  echo "run.sh: building the harness (one short run_compare.sh)" >&2
  start_norn
  SUBS=1 CAND_PID="$NORN_PID" REF_PORT=$REF_PORT OUT="$OUTDIR/warmup.jsonl" timeout 900 "$BENCH/run_compare.sh" "ws://127.0.0.1:$PORT" 1 >/dev/null 2>&1 || true
  stop "$NORN_PID"; NORN_PID=
}

{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "python: $("$PY" -c 'import sys; print(sys.version.split()[0])')"
  echo "uvloop: $("$PY" -c 'import uvloop; print(uvloop.__version__)' 2>/dev/null || echo absent)"
  echo "orjson: $("$PY" -c 'import orjson; print(orjson.__version__)' 2>/dev/null || echo absent)"
  echo "websockets: $("$PY" -c 'import websockets; print(websockets.__version__)')"
  echo "cpu: $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "mem: $(free -m | awk '/^Mem:/ {print $2 " MiB"}')"
  echo "kernel: $(uname -r)"
  echo "pin: ${PIN:-0}  reps: $REPS"
} >"$OUTDIR/machine.txt"
cat "$OUTDIR/machine.txt" >&2

COMPARE_ENV=("PIN=${PIN:-0}")
for group in $ONLY; do
  case $group in
    compare)
      COMPARE_ENV=("PIN=${PIN:-0}" "SAT=1" "SUBS=100"); compare compare-100
      COMPARE_ENV=("PIN=${PIN:-0}" "SAT=1" "SUBS=1000"); compare compare-1000
      COMPARE_ENV=("PIN=${PIN:-0}" "SUBS=1"); compare compare-1
      ;;
    asyncio)
      COMPARE_ENV=("PIN=${PIN:-0}" "SUBS=100"); compare compare-100-asyncio NORN_LOOP=asyncio
      ;;
    pinned) # each hub on cpu0, the load generator on cpu1
      SAVED_TS=("${HUB_TS[@]}"); HUB_TS=(taskset -c 0)
      COMPARE_ENV=("PIN=1" "SUBS=100"); compare compare-100-pinned
      COMPARE_ENV=("PIN=1" "SUBS=1000"); compare compare-1000-pinned
      HUB_TS=("${SAVED_TS[@]}")
      ;;
    stalled)
      echo "== stalled" >&2
      for rep in $(seq "$REPS"); do
        start_norn
        start_ref
        loadgen "cand-stalled" "ws://127.0.0.1:$PORT" "$NORN_PID" -subs 100 -events 60000 -lag 32 -stalled 10 -timeout 120s
        loadgen "ref-stalled" "ws://127.0.0.1:$REF_PORT" "$REF_PID" -subs 100 -events 60000 -lag 32 -stalled 10 -timeout 120s
      done
      stop "$NORN_PID"; NORN_PID=; stop "$REF_PID"; REF_PID=
      ;;
    idle)
      echo "== idle" >&2
      for rep in $(seq "$REPS"); do
        start_norn
        loadgen "cand-idle" "ws://127.0.0.1:$PORT" "$NORN_PID" -mode idle -subs 10000 -dial-conc 100
        stop "$NORN_PID"; NORN_PID=
        start_ref
        loadgen "ref-idle" "ws://127.0.0.1:$REF_PORT" "$REF_PID" -mode idle -subs 10000 -dial-conc 100
        stop "$REF_PID"; REF_PID=
      done
      ;;
    cli)
      echo "== cli" >&2
      start_norn
      "$PY" - "$OUTDIR/cli.jsonl" "$PORT" <<'PY'
import json, os, statistics, subprocess, sys, time
out, port = sys.argv[1], sys.argv[2]
url = f"ws://127.0.0.1:{port}"
def wall(argv, n=10, **kw):
    t = []
    for _ in range(n):
        t0 = time.perf_counter()
        p = subprocess.run(argv, capture_output=True, timeout=60, **kw)
        t.append(time.perf_counter() - t0)
        if p.returncode != 0:
            return {"error": p.stderr.decode(errors="replace")[-300:]}
    return {"median_ms": round(statistics.median(t) * 1e3, 1), "min_ms": round(min(t) * 1e3, 1), "n": n}
norn = [sys.executable, "-m", "norn_cli"]
rows = {
    "norn --help": wall([*norn, "--help"]),
    # EMIT_PYTHONPATH: measure `norn emit` from another checkout (e.g. before a merge)
    "norn emit": wall([*norn, "--url", url, "emit", "deploy.step", "--app", "bench", "-p", "step=build", "-p", "status=building"],
                      env={**os.environ, "PYTHONPATH": os.environ.get("EMIT_PYTHONPATH") or os.environ["PYTHONPATH"]},
                      cwd=os.environ.get("EMIT_PYTHONPATH") or None),
    "python -c pass": wall([sys.executable, "-c", "pass"]),
}
starts = []
for _ in range(5):
    t0 = time.perf_counter()
    p = subprocess.Popen([*norn, "serve", "--port", "0"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    p.stderr.readline()
    starts.append(time.perf_counter() - t0)
    p.terminate(); p.wait(10)
rows["norn serve (to its ready line)"] = {"median_ms": round(statistics.median(starts) * 1e3, 1), "n": 5}
with open(out, "w") as f:
    for k, v in rows.items():
        f.write(json.dumps({"what": k, **v}) + "\n")
        print(k, v, file=sys.stderr)
PY
      stop "$NORN_PID"; NORN_PID=
      ;;
    *) echo "run.sh: unknown group $group" >&2; exit 2 ;;
  esac
done

"$PY" "$ROOT/benchmarks/summarize.py" "$OUTDIR" | tee "$OUTDIR/summary.md"
