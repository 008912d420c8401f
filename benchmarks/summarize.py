"""Turn one benchmarks/run.sh result directory into the Markdown table of benchmarks/README.md."""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["main", "summarize"]

Row = dict[str, Any]


def _rows(path: Path) -> list[Row]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _med(rows: list[Row], label: str, f: Callable[[Row], Any]) -> float | None:
    vals = []
    for r in rows:
        if r.get("label") != label or r.get("errors"):
            continue
        try:
            v = f(r)
        except (KeyError, TypeError):
            continue
        if v is not None:
            vals.append(v)
    return statistics.median(vals) if vals else None


def _num(v: float | None, unit: str = "", digits: int = 0) -> str:
    if v is None:
        return "n/a"
    return f"{v:,.{digits}f}{unit}"


def _subs(n: int) -> str:
    return f"{n:,} subscriber{'s' if n != 1 else ''}"


def _ratio(c: float | None, r: float | None) -> str:
    return f"{c / r:.2f}x" if c and r else "n/a"


def summarize(out: Path) -> str:
    """The results table (Markdown) for one run directory."""
    lines = [
        "| scenario | norn | Go refhub | norn / ref |",
        "|---|---:|---:|---:|",
    ]

    def add(name: str, c: str, r: str, ratio: str = "") -> None:
        lines.append(f"| {name} | {c} | {r} | {ratio} |")

    def eps(r: Row) -> Any:
        return r["deliver_eps"]

    def p99(r: Row) -> Any:
        return r["lat_us"]["p99"] / 1000

    for subs in (1, 100, 1000):
        rows = _rows(out / f"compare-{subs}.jsonl")
        if not rows:
            continue
        c, r = _med(rows, "cand-tput", eps), _med(rows, "ref-tput", eps)
        add(f"delivered events/s, {_subs(subs)}", _num(c), _num(r), _ratio(c, r))
        if subs == 1:
            c, r = _med(rows, "cand-tput", lambda x: x["publish_eps"]), _med(rows, "ref-tput", lambda x: x["publish_eps"])
            add("one publisher's acked events/s (1 subscriber)", _num(c), _num(r), _ratio(c, r))
        rate = min(2000, 20000 // subs)  # as run_compare.sh sizes its rate scenario
        c, r = _med(rows, "cand-rate", p99), _med(rows, "ref-rate", p99)
        add(f"p99 latency, {_subs(subs)} at {rate:,} events/s", _num(c, " ms", 2), _num(r, " ms", 2), _ratio(c, r))
        sat = [x for x in rows if x.get("label") == "cand-sat"]
        if sat:
            def comp(x: Row) -> Any:
                return x["completeness"]

            def drops(x: Row) -> Any:
                return x["dropped_subs"]

            cs, rs = _med(rows, "cand-sat", comp), _med(rows, "ref-sat", comp)
            cd, rd = _med(rows, "cand-sat", drops), _med(rows, "ref-sat", drops)
            add(
                f"saturation, {_subs(subs)}: completeness (dropped)",
                f"{_num(cs, digits=3)} ({_num(cd)})",
                f"{_num(rs, digits=3)} ({_num(rd)})",
            )
        healthy = [x for x in rows if str(x.get("label", "")).startswith("cand-") and not x.get("errors")]
        worst = min((x.get("completeness", 0) for x in healthy), default=None)
        dropped = sum(x.get("dropped_subs", 0) for x in healthy)
        add(f"norn, {_subs(subs)}, every run: min completeness / healthy dropped", f"{_num(worst, digits=3)} / {dropped}", "", "")

    for subs in (100, 1000):
        rows = _rows(out / f"compare-{subs}-pinned.jsonl")
        if rows:
            c, r = _med(rows, "cand-tput", eps), _med(rows, "ref-tput", eps)
            add(f"pinned (PIN=1): delivered events/s, {_subs(subs)}", _num(c), _num(r), _ratio(c, r))
            rate = min(2000, 20000 // subs)
            c, r = _med(rows, "cand-rate", p99), _med(rows, "ref-rate", p99)
            add(f"pinned (PIN=1): p99 latency, {_subs(subs)} at {rate:,} events/s", _num(c, " ms", 2), _num(r, " ms", 2), _ratio(c, r))

    rows = _rows(out / "compare-100-asyncio.jsonl")
    if rows:
        c, r = _med(rows, "cand-tput", eps), _med(rows, "ref-tput", eps)
        add("uvloop off (NORN_LOOP=asyncio): delivered events/s, 100 subscribers", _num(c), _num(r), _ratio(c, r))
        c, r = _med(rows, "cand-rate", p99), _med(rows, "ref-rate", p99)
        add("uvloop off: p99 latency, 100 subscribers at 200 events/s", _num(c, " ms", 2), _num(r, " ms", 2), _ratio(c, r))

    lg = _rows(out / "loadgen.jsonl")
    if any(x.get("label") == "cand-stalled" for x in lg):
        def closed(x: Row) -> Any:
            return x.get("stalled_closed")

        def codes(label: str) -> str:
            seen: dict[str, int] = {}
            for x in lg:
                if x.get("label") == label:
                    for k, v in (x.get("stalled_close_codes") or {}).items():
                        seen[k] = seen.get(k, 0) + v
            return ", ".join(f"{k}×{v}" for k, v in sorted(seen.items())) or "none"

        def peak(x: Row) -> Any:
            return x["hub_rss_kb_peak"] / 1024

        def comp(x: Row) -> Any:
            return x["completeness"]

        add(
            "10 stalled subscribers (+100 healthy): closed, median of runs (codes, all runs)",
            f"{_num(_med(lg, 'cand-stalled', closed))} ({codes('cand-stalled')})",
            f"{_num(_med(lg, 'ref-stalled', closed))} ({codes('ref-stalled')})",
        )
        def growth(x: Row) -> Any:
            return (x["hub_rss_kb_peak"] - x["hub_rss_kb_before"]) / 1024

        c, r = _med(lg, "cand-stalled", peak), _med(lg, "ref-stalled", peak)
        add("10 stalled subscribers: hub peak RSS", _num(c, " MiB", 1), _num(r, " MiB", 1), _ratio(c, r))
        c, r = _med(lg, "cand-stalled", growth), _med(lg, "ref-stalled", growth)
        add("10 stalled subscribers: hub RSS growth during the run", _num(c, " MiB", 1), _num(r, " MiB", 1), _ratio(c, r))
        add(
            "10 stalled subscribers: healthy completeness",
            _num(_med(lg, "cand-stalled", comp), digits=3),
            _num(_med(lg, "ref-stalled", comp), digits=3),
        )
    if any(x.get("label") == "cand-idle" for x in lg):
        def per(x: Row) -> Any:
            return x["bytes_per_conn"] if x.get("idle_verified") == x.get("subs_connected") else None

        c, r = _med(lg, "cand-idle", per), _med(lg, "ref-idle", per)
        add("10,000 idle subscribers: hub memory per connection", _num(c, " B"), _num(r, " B"), _ratio(c, r))

    for x in _rows(out / "cli.jsonl"):
        value = _num(x.get("median_ms"), " ms", 0) if "median_ms" in x else f"error: {x.get('error', '')[:60]}"
        add(f"`{x['what']}` wall time (median)", value, "", "")
    return "\n".join(lines) + "\n"


def main() -> None:
    print(summarize(Path(sys.argv[1])))


if __name__ == "__main__":
    main()
