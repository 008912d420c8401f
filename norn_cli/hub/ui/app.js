/* norn dashboard: the hub's events, pipeline runs and app health, live.
 *
 * It subscribes to this hub's /ws like any client (it never uses /api),
 * reconnects with backoff and resumes after the last event id it saw, so
 * nothing the hub retains is lost or shown twice. Everything from the wire
 * is rendered as text (textContent), never parsed as HTML.
 * No dependencies and no build step: this file is served as written.
 */
'use strict';

(() => {
  const MAX_ROWS = 500; // event rows kept in the list
  const STREAM_LAST = 100; // events replayed into the list when it (re)subscribes
  const OVERVIEW_LAST = 1000; // pipeline and app events replayed to rebuild runs and tiles
  const EVERYTHING = 1000000000; // `last=` this replays all the hub retains
  const BACKOFF_MIN = 200; // ms before the first reconnect, doubling ...
  const BACKOFF_MAX = 5000; // ... up to this
  const MAX_RUNS = 24; // run cards kept (finished ones go first)
  const MAX_TILES = 60; // app tiles kept (the least recently heard of go first)
  const OUTPUT_TAIL = 8; // output lines shown on a run card
  const REDRAW_MS = 200; // at most five redraws a second
  const RUN_KINDS = new Set(['deploy', 'forge', 'teardown', 'restart', 'rollback']);
  const OVERVIEW_TYPES = ['deploy.*', 'forge.*', 'teardown.*', 'restart.*', 'rollback.*', 'app.*'];

  // ------------------------------------------------------------ event ids

  /** "<ms>-<seq>" as a comparable pair, or null (the hub's ids have at most 15 digits a side). */
  function parseId(id) {
    const m = typeof id === 'string' ? /^(\d{1,15})-(\d{1,15})$/.exec(id) : null;
    return m ? [Number(m[1]), Number(m[2])] : null;
  }

  function compareIds(a, b) {
    return a[0] - b[0] || a[1] - b[1];
  }

  // ------------------------------------------------------------ text

  const ANSI_RE = /\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])/g;
  const CONTROL_RE = /[\x00-\x08\x0b-\x1f\x7f-\x9f]/g;
  const ANY_CONTROL_RE = /[\x00-\x1f\x7f-\x9f]/;
  const LINE_BREAKS = /\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]/;

  /** Untrusted text made readable: colour codes dropped, other control characters escaped (render's `clean`). */
  function clean(text) {
    const s = String(text);
    if (!ANY_CONTROL_RE.test(s)) return s; // the usual case, and the cheap one
    return s
      .replace(ANSI_RE, '')
      .replace(/\t/g, '    ')
      .replace(CONTROL_RE, (c) => '\\x' + c.charCodeAt(0).toString(16).padStart(2, '0'));
  }

  /** Python's str.splitlines(): the same line breaks, no trailing empty line. */
  function splitlines(text) {
    if (text === '') return [];
    const parts = text.split(LINE_BREAKS);
    if (parts[parts.length - 1] === '') parts.pop();
    return parts;
  }

  function firstLine(text) {
    const lines = splitlines(text).filter((line) => line.trim());
    if (!lines.length) return '';
    return lines[0].trimEnd() + (lines.length > 1 ? ' …' : '');
  }

  /** 350ms, 1.2s, 1m05s (render's fmt_duration). */
  function fmtDuration(ms) {
    if (ms < 1000) return `${Math.round(ms)}ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(1)}s`;
    const total = Math.round(ms / 1000);
    return `${Math.floor(total / 60)}m${String(total % 60).padStart(2, '0')}s`;
  }

  /** 0:04, 12:30, 1:02:03 (render's fmt_clock). */
  function fmtClock(seconds) {
    let s = Math.max(0, Math.floor(seconds));
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    s %= 60;
    const ss = String(s).padStart(2, '0');
    return h ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
  }

  function pad(n, width) {
    return String(n).padStart(width, '0');
  }

  /** Local wall-clock time of an epoch-seconds instant: 13:27:16.123. */
  function fmtTime(seconds) {
    if (seconds === null) return '--:--:--.---';
    const d = new Date(seconds * 1000);
    return `${pad(d.getHours(), 2)}:${pad(d.getMinutes(), 2)}:${pad(d.getSeconds(), 2)}.${pad(d.getMilliseconds(), 3)}`;
  }

  function compact(value, limit) {
    let text;
    try {
      text = JSON.stringify(value);
    } catch (err) {
      text = String(value);
    }
    if (text === undefined) text = String(value);
    return limit && text.length > limit ? text.slice(0, limit) + '…' : text;
  }

  function isObject(value) {
    return value !== null && typeof value === 'object' && !Array.isArray(value);
  }

  function hasOwn(obj, key) {
    return Object.prototype.hasOwnProperty.call(obj, key);
  }

  // ------------------------------------------------------------ RunState: a port of core/run_state.py
  //
  // The same machine as the CLI's live view, line for line; tests/run_state_spec.json
  // holds event sequences and the states both must reach. Names are camelCase here.

  const PENDING = 'pending';
  const RUNNING = 'running';
  const DONE = 'done';
  const FAILED = 'failed';
  const SKIPPED = 'skipped';
  const OUTPUT_KEEP = 200; // output lines remembered per step

  const PHASES = new Map();
  for (const s of ['pending', 'queued', 'waiting', 'planned']) PHASES.set(s, PENDING);
  for (const s of ['completed', 'complete', 'deployed', 'succeeded', 'success', 'done', 'ok', 'passed', 'finished']) PHASES.set(s, DONE);
  for (const s of ['failed', 'failure', 'error', 'errored', 'cancelled', 'canceled', 'timeout', 'timed_out']) PHASES.set(s, FAILED);
  for (const s of ['skipped', 'skip']) PHASES.set(s, SKIPPED);
  const DURATION_RE = /^(\d+(?:\.\d+)?)\s*(ms|s|m)?$/;
  const FINAL = new Set(['completed', 'failed']);

  /** pending, running, done, failed or skipped; any status not known means running. */
  function phaseOf(status) {
    return PHASES.get(status.trim().toLowerCase()) || RUNNING;
  }

  /** A non-empty string, else null (run_state's `_text`). */
  function text(value) {
    return typeof value === 'string' && value ? value : null;
  }

  // RFC 3339 / ISO 8601 date-times as Python's fromisoformat reads the usual ones:
  // date, optional time (T or space), optional Z or numeric offset. No offset: local time.
  const ISO_RE = /^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2})(?::(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?)?(?:(Z)|([+-])(\d{2}):?(\d{2}))?$/;

  /** RFC 3339 text as epoch seconds; `fallback` when absent or unreadable (run_state's `_epoch`). */
  function epoch(value, fallback) {
    if (typeof value !== 'string' || !value) return fallback;
    const m = ISO_RE.exec(value);
    if (!m) return fallback;
    const [y, mo, d, h, mi, s] = [1, 2, 3, 4, 5, 6].map((i) => Number(m[i] || 0));
    if (m[4] === undefined && (m[8] || m[9])) return fallback; // an offset needs a time
    const days = new Date(Date.UTC(y, mo, 0)).getUTCDate();
    if (mo < 1 || mo > 12 || d < 1 || d > days || h > 23 || mi > 59 || s > 59) return fallback;
    const micros = Number((m[7] || '').slice(0, 6).padEnd(6, '0'));
    let ms;
    if (m[8] || m[9]) {
      const oh = Number(m[10] || 0);
      const om = Number(m[11] || 0);
      if (oh > 23 || om > 59) return fallback;
      const offset = (m[9] === '-' ? -1 : 1) * (oh * 60 + om) * 60000;
      ms = Date.UTC(y, mo - 1, d, h, mi, s) - offset;
    } else {
      const local = new Date(y, mo - 1, d, h, mi, s);
      local.setFullYear(y); // years before 100 would otherwise mean 19xx
      ms = local.getTime();
    }
    // Whole microseconds over a million, as Python's timestamp() divides.
    return (ms * 1000 + micros) / 1e6;
  }

  class StepState {
    constructor(name) {
      this.name = name;
      this.status = 'pending';
      this.phase = PENDING;
      this.durationMs = null;
      this.durationText = null; // a durationMs that is not a number, shown as given
      this.started = null; // when it began running (hub clock, epoch seconds)
      this.error = null;
      this.output = [];
    }

    /** Take `durationMs` as a number, a numeric string, or text like "1.2s" / "350ms". */
    setDuration(value) {
      if (typeof value === 'boolean' || value === null || value === undefined) return;
      if (typeof value === 'number') {
        this.durationMs = value;
        this.durationText = null;
        return;
      }
      // Python's str() of a list or object differs in spelling; only display text depends on it.
      const t = (typeof value === 'string' ? value : compact(value)).trim();
      const m = DURATION_RE.exec(t);
      if (m === null) {
        this.durationMs = null;
        this.durationText = t || null;
        return;
      }
      const scale = { s: 1000, m: 60000 }[m[2] || 'ms'] || 1;
      this.durationMs = parseFloat(m[1]) * scale;
      this.durationText = null;
    }

    addOutput(lines) {
      for (const line of lines) this.output.push(line);
      if (this.output.length > OUTPUT_KEEP) this.output.splice(0, this.output.length - OUTPUT_KEEP);
    }
  }

  class RunState {
    constructor(runId = null, kind = null) {
      this.runId = runId;
      this.kind = kind; // null: taken from the first pipeline event
      this.app = null;
      this.ref = null;
      this.imageTag = null;
      this.steps = new Map();
      this.outcome = null; // "completed" or "failed"
      this.error = null;
      this.failedStep = null;
      this.started = null;
      this.finished = null;
      this.restarted = false;
      this.gap = false; // the hub said some events may be missing
      this.lastId = null;
    }

    get done() {
      return this.outcome !== null;
    }

    get ok() {
      return this.outcome === 'completed';
    }

    get finishedSteps() {
      let n = 0;
      for (const s of this.steps.values()) if (s.phase === DONE || s.phase === FAILED || s.phase === SKIPPED) n += 1;
      return n;
    }

    running() {
      return [...this.steps.values()].filter((s) => s.phase === RUNNING);
    }

    /** Seconds since the run began (until it ended), or null before anything is known. */
    elapsed(now) {
      if (this.started === null) return null;
      const end = this.finished !== null ? this.finished : now;
      return Math.max(0, end - this.started);
    }

    /** Fold one envelope into the state; false when it says nothing about the run. */
    apply(env, now = null) {
      const etype = env.type;
      const payload = env.payload;
      if (typeof etype !== 'string' || !isObject(payload)) return false;
      if (etype === 'hub.gap') {
        this.gap = true;
        return true;
      }
      const ts = epoch(env.ts, now);
      const dot = etype.indexOf('.');
      const kind = dot < 0 ? etype : etype.slice(0, dot);
      const what = dot < 0 ? '' : etype.slice(dot + 1);
      if (what === 'queued' || what === 'step' || FINAL.has(what)) {
        if (this.kind === null) this.kind = kind;
        else if (kind !== this.kind) return false;
      } else if (etype === 'deploy.rollback') {
        this.imageTag = text(payload.imageTag) || this.imageTag;
        return true;
      } else if (etype === 'app.restarted') {
        this.restarted = true;
        return true;
      } else {
        return false;
      }
      if (typeof env.id === 'string') this.lastId = env.id;
      if (this.app === null && typeof env.appId === 'string') this.app = env.appId;
      this.runId = this.runId || text(payload.runId) || (kind === 'deploy' && what !== 'step' ? text(payload.id) : null);
      if (this.started === null) this.started = epoch(payload.startedAt, ts);
      if (what === 'step') {
        this._step(payload, ts);
      } else {
        this.ref = text(payload.ref) || text(payload.commitSha) || this.ref;
        this.imageTag = text(payload.imageTag) || this.imageTag;
        this._plan(payload.steps);
        if (FINAL.has(what)) this._finish(what, payload, ts);
      }
      return true;
    }

    _stepNamed(name) {
      let step = this.steps.get(name);
      if (step === undefined) {
        step = new StepState(name);
        this.steps.set(name, step);
      }
      return step;
    }

    /** Steps listed in a queued/final payload: names, or objects with name and status. */
    _plan(steps) {
      if (!Array.isArray(steps)) return;
      for (const item of steps) {
        if (typeof item === 'string') {
          this._stepNamed(item);
        } else if (isObject(item)) {
          const name = text(item.name) || text(item.step);
          if (name === null) continue;
          const step = this._stepNamed(name);
          const status = text(item.status);
          if (status !== null && phaseOf(status) !== PENDING && phaseOf(status) !== RUNNING) {
            step.status = status;
            step.phase = phaseOf(status);
          }
          if (hasOwn(item, 'durationMs')) step.setDuration(item.durationMs);
        }
      }
    }

    _step(payload, ts) {
      const name = text(payload.step);
      if (name === null) return;
      const step = this._stepNamed(name);
      const status = text(payload.status) || 'running';
      const phase = phaseOf(status);
      const output = payload.output;
      if (typeof output === 'string' && output) {
        step.addOutput(splitlines(output));
        if (phase === RUNNING && step.phase !== PENDING) return; // output of a step under way (or late output) changes nothing else
      }
      if (phase === RUNNING && step.phase !== RUNNING) step.started = ts;
      if (step.phase === PENDING && phase !== PENDING) {
        // Norn-style runs may only say when a step starts: the ones before it are over.
        for (const other of this.steps.values()) {
          if (other === step) break;
          if (other.phase === RUNNING) RunState._close(other, DONE, ts);
        }
      }
      step.status = status;
      step.phase = phase;
      if (hasOwn(payload, 'durationMs')) {
        step.setDuration(payload.durationMs);
      } else if (phase !== RUNNING && step.durationMs === null && step.started !== null && ts !== null) {
        step.durationMs = Math.max(0, (ts - step.started) * 1000);
      }
      if (phase === FAILED) step.error = text(payload.error) || step.error;
    }

    _finish(what, payload, ts) {
      this.outcome = what;
      this.finished = epoch(payload.finishedAt, ts);
      if (what === 'completed') {
        for (const step of this.running()) RunState._close(step, DONE, ts);
        return;
      }
      this.error = text(payload.error) || 'failed';
      const running = this.running();
      let name = text(payload.step) || (running.length ? running[running.length - 1].name : null);
      if (name === null) {
        const failed = [...this.steps.values()].filter((s) => s.phase === FAILED);
        name = failed.length ? failed[failed.length - 1].name : null;
      }
      this.failedStep = name;
      for (const step of running) RunState._close(step, FAILED, ts);
      if (name !== null && this.steps.has(name) && this.steps.get(name).phase !== FAILED) {
        RunState._close(this.steps.get(name), FAILED, ts);
      }
    }

    static _close(step, phase, ts) {
      step.phase = phase;
      if (phase === FAILED) step.status = 'failed';
      else if (phaseOf(step.status) !== DONE) step.status = 'completed';
      if (step.durationMs === null && step.durationText === null && step.started !== null && ts !== null) {
        step.durationMs = Math.max(0, (ts - step.started) * 1000);
      }
    }
  }

  // ------------------------------------------------------------ RunBook: which run an event belongs to

  /**
   * Runs by key: the hub's runs by `runId`; Norn's deploys by their Deployment
   * `id`; other Norn-style events (no id at all) join the latest run of their
   * app and kind, and a `.queued` without one starts a new run.
   */
  class RunBook {
    constructor(limit = MAX_RUNS) {
      this.limit = limit;
      this.runs = new Map(); // key -> RunState, oldest first
      this.latest = new Map(); // app + kind -> key of its newest run
      this.serial = 0;
    }

    /** Fold an envelope in; the key of the run it changed, or null. Evicted keys go to `dropped`. */
    apply(env, now, dropped = []) {
      const etype = env.type;
      const payload = env.payload;
      if (typeof etype !== 'string' || !isObject(payload)) return null;
      if (etype === 'hub.gap') return null; // see gap()
      const runId = text(payload.runId);
      if (etype === 'deploy.rollback' || etype === 'app.restarted') {
        const run = runId && this.runs.get('run:' + runId);
        return run && run.apply(env, now) ? 'run:' + runId : null;
      }
      const dot = etype.indexOf('.');
      const kind = etype.slice(0, dot);
      const what = etype.slice(dot + 1);
      if (dot < 0 || !RUN_KINDS.has(kind) || !(what === 'queued' || what === 'step' || FINAL.has(what))) return null;
      const slot = (typeof env.appId === 'string' ? env.appId : '') + '\u0000' + kind;
      let key;
      if (runId) key = 'run:' + runId;
      else if (kind === 'deploy' && what !== 'step' && text(payload.id)) key = 'run:' + payload.id;
      else if (what !== 'queued' && this.latest.has(slot) && !this.runs.get(this.latest.get(slot)).done) key = this.latest.get(slot);
      else key = `anon:${(this.serial += 1)}`;
      let run = this.runs.get(key);
      if (run === undefined) {
        run = new RunState();
        this.runs.set(key, run);
        this._evict(dropped);
      }
      this.latest.set(slot, key);
      return run.apply(env, now) ? key : null;
    }

    /** The hub may have lost events: every run still going may be missing some. */
    gap(env) {
      const keys = [];
      for (const [key, run] of this.runs) {
        if (!run.done) {
          run.apply(env);
          keys.push(key);
        }
      }
      return keys;
    }

    _evict(dropped) {
      while (this.runs.size > this.limit) {
        let victim = null;
        for (const [key, run] of this.runs) {
          if (run.done) {
            victim = key;
            break;
          }
        }
        if (victim === null) victim = this.runs.keys().next().value;
        this.runs.delete(victim);
        dropped.push(victim);
      }
    }
  }

  // ------------------------------------------------------------ Subscription: /ws that resumes

  /**
   * One /ws subscription with server-side filters that survives disconnects.
   *
   * Resuming: after an event, `since=<its id>`. Before any event the page cannot
   * read the handshake's Norn-Last-Id header, so the first connection asks for
   * `last=N`: if that replays nothing, nothing matching was retained, and a
   * reconnect asks for everything retained (all of it new to us). Events at or
   * before the last id seen are dropped, so none is shown twice.
   */
  class Subscription {
    constructor({ apps = [], types = [], initialLast, onEvent, onGap, onState }) {
      Object.assign(this, { apps, types, initialLast, onEvent, onGap, onState });
      this.lastId = null;
      this.lastKey = null;
      this.connected = false; // a connection has been established once
      this.delay = BACKOFF_MIN;
      this.ws = null;
      this.timer = null;
      this.stopped = false;
      this.state = 'connecting';
      this.lastInfo = null; // why it is retrying, for the connection label
    }

    url() {
      const q = new URLSearchParams();
      for (const app of this.apps) q.append('app', app);
      for (const type of this.types) q.append('type', type);
      if (this.lastId !== null) q.set('since', this.lastId);
      else q.set('last', String(this.connected ? EVERYTHING : this.initialLast));
      const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
      return `${scheme}//${location.host}/ws?${q}`;
    }

    start() {
      this.timer = null;
      if (this.stopped) return;
      const ws = new WebSocket(this.url());
      this.ws = ws;
      this._set('connecting', {});
      ws.onopen = () => {
        if (this.ws !== ws) return;
        this.connected = true;
        this.delay = BACKOFF_MIN;
        this._set('live', {});
      };
      ws.onmessage = (msg) => {
        if (this.ws === ws) this._receive(msg.data);
      };
      ws.onclose = (ev) => {
        if (this.ws !== ws) return;
        this.ws = null;
        if (!this.stopped) this._retry(ev);
      };
    }

    stop() {
      this.stopped = true;
      if (this.timer !== null) clearTimeout(this.timer);
      if (this.ws !== null) {
        const ws = this.ws;
        this.ws = null;
        ws.close(1000, 'filters changed');
      }
    }

    _retry(ev) {
      const pause = this.delay * (0.5 + Math.random());
      this.delay = Math.min(this.delay * 2, BACKOFF_MAX);
      const why = ev.code === 1013 ? 'dropped as a slow consumer' : ev.reason || (ev.code === 1001 ? 'the hub is going away' : 'connection lost');
      this._set('retrying', { pause, why });
      this.timer = setTimeout(() => this.start(), pause);
    }

    _set(state, info) {
      this.state = state;
      this.lastInfo = state === 'retrying' ? `${info.why}; retrying in ${(info.pause / 1000).toFixed(1)}s` : null;
      this.onState(this, state, info);
    }

    _receive(data) {
      let env;
      try {
        env = JSON.parse(data);
      } catch (err) {
        return; // the hub sends JSON only
      }
      if (!isObject(env)) return;
      if (env.type === 'hub.gap') {
        // A history the hub lost: what follows is all new, whatever its ids
        // (even should a restarted hub's clock have stepped back).
        this.lastKey = null;
        this.onGap(env);
        return;
      }
      const key = parseId(env.id);
      if (key !== null) {
        if (this.lastKey !== null && compareIds(key, this.lastKey) <= 0) return; // seen already
        this.lastId = env.id;
        this.lastKey = key;
      }
      this.onEvent(env);
    }
  }

  // ------------------------------------------------------------ DOM helpers

  const $ = (id) => document.getElementById(id);

  /** An element with a class and text; text always goes in as text. */
  function el(tag, cls, content) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (content !== undefined && content !== null) node.textContent = content;
    return node;
  }

  const GOOD = new Set(['completed', 'deployed', 'healthy', 'ok', 'success', 'succeeded', 'passed', 'up']);
  const BAD = new Set(['failed', 'failure', 'error', 'unhealthy', 'down', 'crashed']);
  const BUSY = new Set(['running', 'building', 'testing', 'queued', 'pending', 'starting', 'deploying']);
  const QUIET = new Set(['skipped', 'cancelled', 'canceled']);

  /** The class for a step or app status (render's status_style). */
  function statusClass(status) {
    const s = status.toLowerCase();
    if (BAD.has(s)) return 'bad';
    if (GOOD.has(s)) return 'good';
    if (BUSY.has(s)) return 'busy';
    if (QUIET.has(s)) return 'quiet';
    return '';
  }

  /** The class for an event type: its outcome when it has one, else its family. */
  function typeClass(etype) {
    const dot = etype.indexOf('.');
    const family = dot < 0 ? etype : etype.slice(0, dot);
    const outcome = etype.slice(etype.lastIndexOf('.') + 1);
    if (dot >= 0 && outcome === 'failed') return 't-failed';
    if (dot >= 0 && outcome === 'completed') return 't-completed';
    return ['deploy', 'forge', 'teardown', 'app', 'hub'].includes(family) ? `t-${family}` : '';
  }

  function durationText(value) {
    const ms = typeof value === 'number' ? value : typeof value === 'string' && value.trim() !== '' ? Number(value) : NaN;
    return Number.isFinite(ms) ? fmtDuration(ms) : null;
  }

  /** The payload fields that matter, as [text, class] pairs (render's _payload_parts). */
  function payloadParts(payload) {
    const parts = [];
    if (typeof payload.step === 'string' && payload.step) parts.push([payload.step, 'b']);
    if (typeof payload.status === 'string' && payload.status) parts.push([payload.status, statusClass(payload.status)]);
    if (typeof payload.healthy === 'boolean') parts.push(payload.healthy ? ['healthy', 'good'] : ['unhealthy', 'bad']);
    for (const key of ['durationMs', 'responseMs']) {
      const shown = hasOwn(payload, key) ? durationText(payload[key]) : null;
      if (shown !== null) parts.push([shown, 'dim']);
    }
    for (const key of ['ref', 'commitSha', 'imageTag']) {
      if (typeof payload[key] === 'string' && payload[key]) parts.push([`${key}=${payload[key]}`, '']);
    }
    const error = payload.error;
    if (error !== null && error !== undefined && error !== '') {
      parts.push([`error: ${typeof error === 'string' ? firstLine(error) : compact(error)}`, 'bad']);
    }
    if (typeof payload.output === 'string' && payload.output.trim()) parts.push([firstLine(payload.output), 'dim']);
    if (!parts.length && Object.keys(payload).length) parts.push([compact(payload, 300), 'dim']);
    return parts;
  }

  // ------------------------------------------------------------ the event list

  class StreamView {
    constructor(app) {
      this.app = app;
      this.list = $('events');
      this.note = $('paused-note');
      this.count = $('stream-count');
      this.pending = [];
      this.stale = false; // the rows drawn are older than events dropped unseen
      this.paused = false;
      this.unseen = 0;
      this.received = 0;
      this.envs = new WeakMap(); // row -> its envelope
      this.selected = null;
      this.list.addEventListener('click', (ev) => this._pick(ev.target));
      this.list.addEventListener('keydown', (ev) => {
        if (ev.key === 'Enter' || ev.key === ' ') {
          ev.preventDefault();
          this._pick(ev.target);
        }
      });
    }

    reset() {
      this.pending = [];
      this.stale = false;
      this.unseen = 0;
      this.received = 0;
      this.list.replaceChildren();
      this._counts();
    }

    add(env) {
      this.received += 1;
      if (this.paused) this.unseen += 1;
      this._queue(env);
    }

    gap(env) {
      this._queue(env);
    }

    /**
     * Events wait here, oldest first, to be drawn. More than the list holds:
     * the oldest could only push out rows to be pushed out in turn, so they
     * are dropped, and the rows already drawn too (older still), so the list
     * never has a hole.
     */
    _queue(env) {
      this.pending.push(env);
      if (this.pending.length > 2 * MAX_ROWS) {
        this.pending = this.pending.slice(-MAX_ROWS);
        this.stale = true;
      }
      this.app.schedule();
    }

    setPaused(paused) {
      this.paused = paused;
      this.unseen = 0;
      this.app.schedule();
    }

    /** Draw the waiting events (the newest MAX_ROWS of them), newest on top. */
    flush() {
      this._counts();
      if (this.paused || !this.pending.length) return;
      let items = this.pending;
      this.pending = [];
      if (items.length >= MAX_ROWS) {
        items = items.slice(-MAX_ROWS);
        this.stale = true; // every row drawn is about to go anyway
      }
      if (this.stale) {
        this.list.replaceChildren();
        this.stale = false;
      }
      const frag = document.createDocumentFragment();
      for (let i = items.length - 1; i >= 0; i -= 1) frag.appendChild(this._row(items[i]));
      this.list.prepend(frag);
      let extra = this.list.childElementCount - MAX_ROWS;
      while (extra > 0) {
        this.list.lastElementChild.remove();
        extra -= 1;
      }
    }

    _counts() {
      this.count.textContent = this.received ? `${this.received.toLocaleString('en')} received` : '';
      this.note.hidden = !this.paused;
      if (this.paused) {
        this.note.textContent = `Paused: ${this.unseen.toLocaleString('en')} new event${this.unseen === 1 ? '' : 's'} since, shown on resume (the newest ${MAX_ROWS}).`;
      }
    }

    _row(env) {
      if (env.type === 'hub.gap') {
        const p = isObject(env.payload) ? env.payload : {};
        const row = el('div', 'row gap-row', `events after ${clean(p.since || '?')} may be missing here`);
        row.setAttribute('role', 'listitem');
        return row;
      }
      const row = el('div', 'row');
      row.setAttribute('role', 'listitem');
      row.tabIndex = 0;
      if (typeof env.id === 'string') row.dataset.id = env.id;
      const etype = typeof env.type === 'string' ? env.type : '?';
      row.append(
        el('span', 'c-time', fmtTime(epoch(env.ts, null))),
        el('span', 'c-app', clean(typeof env.appId === 'string' ? env.appId : '')),
        el('span', `c-type ${typeClass(etype)}`, clean(etype)),
      );
      const summary = el('span', 'c-sum');
      const payload = env.payload;
      const parts = isObject(payload) ? payloadParts(payload) : payload === undefined || payload === null ? [] : [[compact(payload, 300), 'dim']];
      for (const [t, cls] of parts) summary.append(el('span', cls, clean(t)));
      row.append(summary);
      this.envs.set(row, env);
      return row;
    }

    _pick(target) {
      const row = target instanceof Element ? target.closest('.row') : null;
      const env = row ? this.envs.get(row) : undefined;
      if (env === undefined) return;
      if (this.selected) this.selected.classList.remove('selected');
      row.classList.add('selected');
      this.selected = row;
      this.app.detail.show(env);
    }
  }

  class DetailView {
    constructor() {
      this.box = $('detail');
      this.title = $('detail-title');
      this.body = $('detail-json');
      $('detail-close').addEventListener('click', () => this.hide());
      document.addEventListener('keydown', (ev) => {
        if (ev.key === 'Escape') this.hide();
      });
    }

    show(env) {
      this.title.textContent = `${typeof env.type === 'string' ? env.type : 'event'} ${typeof env.id === 'string' ? env.id : ''}`.trim();
      this.body.textContent = JSON.stringify(env, null, 2);
      this.box.hidden = false;
    }

    hide() {
      this.box.hidden = true;
    }
  }

  // ------------------------------------------------------------ run cards

  const ICONS = { [PENDING]: '○', [RUNNING]: '◐', [DONE]: '✓', [FAILED]: '✗', [SKIPPED]: '↷' };

  class RunsView {
    constructor() {
      this.box = $('runs');
      this.empty = this.box.querySelector('.empty');
      this.book = new RunBook();
      this.cards = new Map(); // key -> element
      this.dirty = new Set();
    }

    apply(env, now) {
      const dropped = [];
      const key = this.book.apply(env, now, dropped);
      for (const gone of dropped) {
        const card = this.cards.get(gone);
        if (card) card.remove();
        this.cards.delete(gone);
        this.dirty.delete(gone);
      }
      if (key !== null) this.dirty.add(key);
      return key !== null;
    }

    gap(env) {
      for (const key of this.book.gap(env)) this.dirty.add(key);
    }

    tick() {
      for (const [key, run] of this.book.runs) if (!run.done && run.started !== null) this.dirty.add(key);
    }

    flush(now) {
      if (!this.dirty.size) return;
      for (const key of this.dirty) {
        const run = this.book.runs.get(key);
        if (run === undefined) continue;
        let card = this.cards.get(key);
        if (card === undefined) {
          card = el('article', 'run');
          this.cards.set(key, card);
          this.box.prepend(card); // newest first
        }
        this._render(card, run, now);
      }
      this.dirty.clear();
      if (this.empty) this.empty.hidden = this.cards.size > 0;
    }

    _render(card, run, now) {
      const steps = [...run.steps.values()];
      const started = steps.some((s) => s.phase !== PENDING);
      const state = run.done ? run.outcome : started ? 'running' : 'queued';
      card.dataset.state = state;
      card.dataset.kind = run.kind || '';
      card.dataset.app = run.app || '';
      if (run.runId) card.dataset.run = run.runId;

      const head = el('header', 'run-head');
      head.append(el('span', `kind k-${run.kind || 'run'}`, run.kind || 'run'), el('strong', 'run-app', clean(run.app || '?')));
      if (run.ref) head.append(el('span', 'run-ref', `@ ${clean(run.ref)}`));
      if (run.imageTag) head.append(el('span', 'run-ref', `→ ${clean(run.imageTag)}`));
      head.append(el('span', `pill s-${state}`, state));
      const elapsed = run.elapsed(now);
      if (elapsed !== null) head.append(el('span', 'run-clock', run.done ? fmtDuration(elapsed * 1000) : fmtClock(elapsed)));

      const meta = el('div', 'run-meta');
      const bits = [];
      if (run.runId) bits.push(`run ${clean(run.runId)}`);
      if (run.started !== null) bits.push(`started ${fmtTime(run.started).slice(0, 8)}`);
      if (steps.length) bits.push(`${run.finishedSteps}/${steps.length} steps`);
      meta.textContent = bits.join(' · ');

      const bar = el('div', 'bar');
      const fill = el('div', `fill s-${state}`);
      fill.style.width = `${steps.length ? Math.round((100 * run.finishedSteps) / steps.length) : run.done ? 100 : 0}%`;
      bar.append(fill);

      const list = el('ol', 'steps');
      for (const step of steps) {
        const li = el('li', `step p-${step.phase}`);
        li.dataset.step = step.name;
        li.dataset.phase = step.phase;
        let dur = '';
        if (step.durationMs !== null) dur = fmtDuration(step.durationMs);
        else if (step.durationText !== null) dur = clean(step.durationText);
        else if (step.phase === RUNNING && step.started !== null) dur = fmtClock(now - step.started);
        li.append(
          el('span', 'icon', ICONS[step.phase] || '•'),
          el('span', 'name', clean(step.name)),
          el('span', `status ${statusClass(step.status)}`, clean(step.status)),
          el('span', 'dur', dur),
        );
        list.append(li);
      }

      const parts = [head, meta, bar, list];
      if (run.done && !run.ok) {
        parts.push(el('p', 'run-error', `failed${run.failedStep ? ` at ${clean(run.failedStep)}` : ''}: ${clean(run.error || 'failed')}`));
      }
      const shown = this._outputStep(run, steps);
      if (shown !== null) {
        const out = el('div', 'output');
        out.append(el('div', 'output-label', `${clean(shown.name)} output`), el('pre', 'output-text', shown.output.slice(-OUTPUT_TAIL).map(clean).join('\n')));
        parts.push(out);
      }
      if (run.restarted) parts.push(el('p', 'run-note', 'app restarted'));
      if (run.gap) parts.push(el('p', 'run-note warn', 'the hub may have lost some events of this run'));
      card.replaceChildren(...parts);
    }

    /** Whose output to show: the running step, else the failing one, else the last that wrote any. */
    _outputStep(run, steps) {
      const running = steps.filter((s) => s.phase === RUNNING && s.output.length);
      if (running.length) return running[running.length - 1];
      if (run.failedStep !== null && run.steps.has(run.failedStep) && run.steps.get(run.failedStep).output.length) {
        return run.steps.get(run.failedStep);
      }
      const any = steps.filter((s) => s.output.length);
      return any.length ? any[any.length - 1] : null;
    }
  }

  // ------------------------------------------------------------ app tiles

  class TilesView {
    constructor() {
      this.box = $('tiles');
      this.empty = this.box.querySelector('.empty');
      this.apps = new Map(); // app -> {status, seen, restarted, el}
      this.dirty = new Set();
    }

    apply(env, now) {
      const app = typeof env.appId === 'string' ? env.appId : '';
      if (!app || !isObject(env.payload)) return;
      if (env.type !== 'app.status' && env.type !== 'app.restarted') return;
      let tile = this.apps.get(app);
      if (tile === undefined) {
        tile = { status: null, seen: null, restarted: null, el: null };
        this.apps.set(app, tile);
      } else {
        this.apps.delete(app); // re-insert: most recently heard of last
        this.apps.set(app, tile);
      }
      const at = epoch(env.ts, now);
      if (env.type === 'app.status') {
        tile.status = env.payload;
        tile.seen = epoch(env.payload.checkedAt, at);
      } else {
        tile.restarted = at;
      }
      this.dirty.add(app);
      while (this.apps.size > MAX_TILES) {
        const [oldest, gone] = this.apps.entries().next().value;
        if (gone.el) gone.el.remove();
        this.apps.delete(oldest);
        this.dirty.delete(oldest);
      }
    }

    tick() {
      for (const app of this.apps.keys()) this.dirty.add(app);
    }

    flush(now) {
      if (!this.dirty.size) return;
      for (const app of this.dirty) {
        const tile = this.apps.get(app);
        if (tile === undefined) continue;
        if (tile.el === null) {
          tile.el = el('div', 'tile');
          tile.el.dataset.app = app;
          this._place(tile.el, app);
        }
        this._render(tile, app, now);
      }
      this.dirty.clear();
      if (this.empty) this.empty.hidden = this.apps.size > 0;
    }

    _place(node, app) {
      for (const other of this.box.querySelectorAll('.tile')) {
        if (other.dataset.app > app) {
          this.box.insertBefore(node, other);
          return;
        }
      }
      this.box.append(node);
    }

    _render(tile, app, now) {
      const p = tile.status || {};
      let health = 'unknown';
      let word = tile.status ? 'reported' : 'no status yet';
      if (typeof p.healthy === 'boolean') {
        health = p.healthy ? 'ok' : 'bad';
        word = p.healthy ? 'healthy' : 'unhealthy';
      } else if (typeof p.status === 'string' && p.status) {
        const cls = statusClass(p.status);
        health = cls === 'good' ? 'ok' : cls === 'bad' ? 'bad' : 'unknown';
        word = p.status;
      }
      tile.el.dataset.health = health;
      const facts = [word];
      if (typeof p.statusCode === 'number') facts.push(String(p.statusCode));
      if (typeof p.responseMs === 'number') facts.push(`${p.responseMs < 10 ? p.responseMs.toFixed(1) : Math.round(p.responseMs)} ms`);
      const parts = [el('div', 'tile-head'), el('div', 'tile-state', clean(facts.join(' · ')))];
      parts[0].append(el('span', 'dot'), el('strong', 'tile-name', clean(app)));
      if (tile.seen !== null) parts.push(el('div', 'tile-meta', `checked ${ago(now - tile.seen)}`));
      if (tile.restarted !== null) parts.push(el('div', 'tile-meta', `restarted ${ago(now - tile.restarted)}`));
      if (p.error !== null && p.error !== undefined && p.error !== '') {
        parts.push(el('div', 'tile-error', clean(typeof p.error === 'string' ? firstLine(p.error) : compact(p.error, 200))));
      }
      tile.el.replaceChildren(...parts);
    }
  }

  function ago(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s}s ago`;
    if (s < 3600) return `${Math.floor(s / 60)}m ago`;
    return `${Math.floor(s / 3600)}h ago`;
  }

  // ------------------------------------------------------------ the page

  function splitList(value) {
    return value.split(/[\s,]+/).filter(Boolean);
  }

  class Dashboard {
    constructor() {
      this.detail = new DetailView();
      this.stream = new StreamView(this);
      this.runs = new RunsView();
      this.tiles = new TilesView();
      this.conn = $('conn');
      this.stats = $('stats');
      this.notices = $('notices');
      this.gapNotice = null;
      this.frame = 0; // a redraw is due (a timer or an animation frame)
      this.drawn = -Infinity; // when the last redraw ran
      this.lastId = null;

      const params = new URLSearchParams(location.search);
      this.apps = params.getAll('app').flatMap(splitList);
      this.types = params.getAll('type').flatMap(splitList);
      $('f-app').value = this.apps.join(', ');
      $('f-type').value = this.types.join(', ');
      $('filters').addEventListener('submit', (ev) => {
        ev.preventDefault();
        this.filter(splitList($('f-app').value), splitList($('f-type').value));
      });
      $('f-clear').addEventListener('click', () => {
        $('f-app').value = '';
        $('f-type').value = '';
        this.filter([], []);
      });
      const pause = $('pause');
      pause.addEventListener('click', () => {
        const paused = !this.stream.paused;
        this.stream.setPaused(paused);
        pause.textContent = paused ? 'Resume' : 'Pause';
        pause.setAttribute('aria-pressed', String(paused));
      });

      this.overview = new Subscription({
        types: OVERVIEW_TYPES,
        initialLast: OVERVIEW_LAST,
        onEvent: (env) => this._overview(env),
        onGap: (env) => this._gap(env, true),
        onState: () => this._connState(),
      });
      this.overview.start();
      this._subscribe();
      setInterval(() => {
        this.runs.tick();
        this.tiles.tick();
        this.schedule();
      }, 1000);
    }

    filter(apps, types) {
      this.apps = apps;
      this.types = types;
      const q = new URLSearchParams();
      for (const a of apps) q.append('app', a);
      for (const t of types) q.append('type', t);
      const search = q.toString();
      history.replaceState(null, '', search ? `?${search}` : location.pathname);
      this.streamSub.stop();
      this.stream.reset();
      this._subscribe();
    }

    _subscribe() {
      this.streamSub = new Subscription({
        apps: this.apps,
        types: this.types,
        initialLast: STREAM_LAST,
        onEvent: (env) => {
          if (typeof env.id === 'string') this.lastId = env.id;
          this.stream.add(env);
        },
        onGap: (env) => this._gap(env, false),
        onState: () => this._connState(),
      });
      this.streamSub.start();
    }

    _overview(env) {
      const now = Date.now() / 1000;
      if (typeof env.type === 'string' && env.type.startsWith('app.')) this.tiles.apply(env, now);
      this.runs.apply(env, now);
      this.schedule();
    }

    _gap(env, overview) {
      const p = isObject(env.payload) ? env.payload : {};
      if (overview) this.runs.gap(env);
      else this.stream.gap(env);
      const where = p.oldest ? `its history now starts at ${p.oldest}` : 'it retains nothing older (it may have restarted)';
      const message = `The hub may have lost events after ${p.since || '?'}: ${where}. What is shown may be incomplete.`;
      if (this.gapNotice === null) {
        this.gapNotice = el('div', 'notice warn');
        this.gapNotice.id = 'gap-notice';
        const close = el('button', 'quiet', '×');
        close.type = 'button';
        close.setAttribute('aria-label', 'Dismiss');
        close.addEventListener('click', () => {
          this.gapNotice.remove();
          this.gapNotice = null;
        });
        this.gapNotice.append(el('span', 'notice-text'), close);
        this.notices.append(this.gapNotice);
      }
      this.gapNotice.querySelector('.notice-text').textContent = clean(message);
      this.schedule();
    }

    _connState() {
      const subs = [this.overview, this.streamSub].filter(Boolean);
      const retrying = subs.find((s) => s.state === 'retrying');
      let state = 'live';
      let label = 'live';
      if (retrying) {
        state = 'reconnecting';
        label = `reconnecting (${retrying.lastInfo || 'connection lost'})`;
      } else if (subs.some((s) => s.state !== 'live')) {
        state = 'connecting';
        label = subs.some((s) => s.connected) ? 'reconnecting…' : 'connecting…';
      }
      this.conn.dataset.state = state;
      this.conn.textContent = label;
    }

    /**
     * Draw soon: in the next frame, but at most every REDRAW_MS, so a flood of
     * events costs a few redraws a second (layout and paint of the list cost
     * about the same for one new row as for a hundred), while a lone event shows at once.
     */
    schedule() {
      if (this.frame) return;
      const wait = this.drawn + REDRAW_MS - performance.now();
      const draw = () => requestAnimationFrame(() => this._flush());
      this.frame = wait > 0 ? setTimeout(draw, wait) : draw();
    }

    _flush() {
      this.frame = 0;
      this.drawn = performance.now();
      const now = Date.now() / 1000;
      this.stream.flush();
      this.runs.flush(now);
      this.tiles.flush(now);
      this.stats.textContent = this.lastId ? `last event ${this.lastId}` : '';
    }
  }

  // For tests and the curious: the pure parts, read-only.
  window.norn = Object.freeze({ RunState, StepState, RunBook, Subscription, phaseOf, epoch, splitlines, parseId, clean, fmtDuration, fmtClock });

  if ($('events') !== null) new Dashboard(); // eslint-disable-line no-new
})();
