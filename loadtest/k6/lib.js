// Shared pieces of the k6 scenarios: configuration from the environment, the operators'
// read mix, the writers with their own-read checks, the cross-instance convergence check,
// phase tags (for the Redis outage) and the JSON summary. See loadtest/k6/README.md.
//
// Every URL comes from the environment (run.sh points them at 127.0.0.1).
import http from 'k6/http';
import { sleep } from 'k6';
import exec from 'k6/execution';
import { Counter, Trend } from 'k6/metrics';

// ---------------------------------------------------------------- configuration

export function envStr(name, dflt) {
  const v = __ENV[name];
  return v === undefined || v === '' ? dflt : v;
}
export function envNum(name, dflt) {
  const v = Number(envStr(name, String(dflt)));
  if (!Number.isFinite(v)) throw new Error(`${name}: not a number: ${__ENV[name]}`);
  return v;
}

export const GW = envStr('GW', 'http://127.0.0.1:18280');
export const GW_B = envStr('GW_B', '');
export const SIM = envStr('SIM', 'http://127.0.0.1:19290');
export const RESULTS_DIR = envStr('RESULTS_DIR', 'loadtest/results');
// Per-request timeout: a request that hangs is a failure, not a stuck VU.
export const REQ_TIMEOUT = envStr('REQ_TIMEOUT', '10s');

// Redis outage window in seconds from the scenario start (set by run.sh, which kills
// Redis at that moment, measured from the first request the test sends); 0 = no phases.
const OUTAGE_AT_S = envNum('OUTAGE_AT', 0);
const OUTAGE_LEN_S = envNum('OUTAGE_LEN', 0);

// Statuses operators work on, hottest first, with their weights (same mix as
// examples/storm.rs).
export const HOT = [
  ['MANUFACTURING_APPROVED', 40],
  ['SUBMITTED', 30],
  ['MANUFACTURING_STARTED', 15],
  ['PRICE_CALCULATED', 10],
  ['MANUFACTURING_COMPLETED', 5],
];

export function pickStatus() {
  let x = Math.floor(Math.random() * 100);
  for (const [s, w] of HOT) {
    if (x < w) return s;
    x -= w;
  }
  return HOT[0][0];
}

function randInt(n) {
  return Math.floor(Math.random() * n);
}

// 'before' | 'during' | 'after' around the Redis outage, by time since the scenario
// started at send time; 'steady' when there is no outage.
export function phase() {
  if (!OUTAGE_AT_S) return 'steady';
  const t = (Date.now() - exec.scenario.startTime) / 1000;
  if (t < OUTAGE_AT_S) return 'before';
  if (t < OUTAGE_AT_S + OUTAGE_LEN_S) return 'during';
  return 'after';
}

// ---------------------------------------------------------------- metrics

export const m = {
  // Operators' reads through the gateway(s).
  opReadMs: new Trend('op_read_ms', true),
  opReads: new Counter('op_reads'),
  // Any request to a gateway with an unexpected answer (network error, timeout, 5xx,
  // an unexpected 4xx, X-Cache: STALE is counted separately).
  failed: new Counter('failed_requests'),
  staleServed: new Counter('stale_if_error_served'),
  // Writers.
  writes: new Counter('writes_ok'),
  writeConflicts: new Counter('write_conflicts'),
  writeMs: new Trend('write_ms', true),
  // Own-read checks after every acknowledged write.
  checks: new Counter('own_checks'),
  stale: new Counter('stale_reads'),
  superseded: new Counter('checks_superseded'),
  // Reads the checkers sent straight to the simulator (subtracted from its counters).
  truthLists: new Counter('truth_list_reads'),
  // Cross-instance convergence (two_instances).
  crossMs: new Trend('cross_converge_ms', true),
  crossSentMs: new Trend('cross_converge_sent_ms', true),
  crossChecks: new Counter('cross_checks'),
  crossStale2s: new Counter('cross_stale_beyond_2s'),
  crossStalePolls: new Counter('cross_stale_polls'),
  crossWarmDetails: new Counter('cross_warm_reads'),
  // Stale reads on B (two_instances_outage): a read of the detail on B sent
  // B_STALE_AFTER_MS or more after A acknowledged the write that still shows an older
  // version. b_checks: writes checked that way (tag phase: of the acknowledgement);
  // b_late_reads / b_stale_reads: B reads sent that late / those stale (phase: of the send).
  bChecks: new Counter('b_checks'),
  bLateReads: new Counter('b_late_reads'),
  bStale: new Counter('b_stale_reads'),
};

export function zeroCounters() {
  // A counter that never got a sample is left out of the summary; start them all at 0.
  for (const k of Object.keys(m)) {
    if (m[k] instanceof Counter) m[k].add(0);
  }
}

// ---------------------------------------------------------------- HTTP helpers

const JSON_HEADERS = { 'content-type': 'application/json' };

function params(tags, extra) {
  return Object.assign({ timeout: REQ_TIMEOUT, tags }, extra || {});
}

// The cache's verdict on an answer: mesgate's X-Cache (HIT-L1, HIT-L2, HIT-INDEX, MISS,
// STALE, BYPASS), or, for nginx proxy_cache (the comparator), its X-Cache-Status prefixed with
// 'nginx-' (nginx-HIT, nginx-MISS, nginx-EXPIRED, ...), so the two never mix; '-' if none.
export function xcache(res) {
  const h = res.headers || {};
  const x = h['X-Cache'] || h['x-cache'];
  if (x) return x;
  const n = h['X-Cache-Status'] || h['x-cache-status'];
  return n ? `nginx-${n}` : '-';
}

// The cache answers counted per X-Cache value (op_reads{xcache:...}): mesgate's and nginx's.
export const XCACHE_VALUES = ['HIT-L1', 'HIT-L2', 'HIT-INDEX', 'MISS', 'STALE', 'BYPASS',
  'nginx-HIT', 'nginx-MISS', 'nginx-EXPIRED', 'nginx-UPDATING', 'nginx-STALE', 'nginx-REVALIDATED'];
export function xcacheThresholds(t) {
  for (const v of XCACHE_VALUES) t[`op_reads{xcache:${v}}`] = ['count>=0'];
  return t;
}

// What a gateway answer looked like, for the stale-read log.
function describe(res, t0) {
  return {
    url: res.request ? `${res.request.method} ${res.request.url}` : '?',
    status: res.status,
    x_cache: xcache(res),
    cache_status: (res.headers && res.headers['Cache-Status']) || '-',
    age: (res.headers && res.headers['Age']) || '-',
    ms_after_ack: t0 === undefined ? undefined : Date.now() - t0,
    error: res.error || undefined,
  };
}

// Records a gateway response: failures, STALE answers. Returns whether it was expected.
function record(res, expected, tags) {
  if (!expected.includes(res.status)) {
    m.failed.add(1, tags);
    return false;
  }
  if (xcache(res) === 'STALE') m.staleServed.add(1, tags);
  return true;
}

function items(res) {
  try {
    const a = res.json('items');
    return Array.isArray(a) ? a : [];
  } catch (_) {
    return [];
  }
}

function jsonOr(res, dflt) {
  try {
    return res.json();
  } catch (_) {
    return dflt;
  }
}

export function simStats() {
  const res = http.get(`${SIM}/__sim/stats`, params({ role: 'stats', name: 'sim stats' }));
  return jsonOr(res, {}) || {};
}

// ---------------------------------------------------------------- operators

// One operator read, the storm.rs mix: 70% page 1 of a hot status, 10% page 2, 10% a
// detail, 10% the counts.
export function operatorRead(base, inst) {
  const status = pickStatus();
  const r = randInt(10);
  let url, kind;
  if (r === 0) {
    url = `${base}/api/orders/${4000 + randInt(1000)}`;
    kind = 'detail';
  } else if (r === 1) {
    url = `${base}/api/orders/status-counts`;
    kind = 'counts';
  } else if (r === 2) {
    url = `${base}/api/orders?status=${status}&page=2`;
    kind = 'list_p2';
  } else {
    url = `${base}/api/orders?status=${status}`;
    kind = 'list_p1';
  }
  const tags = { role: 'operator', kind, phase: phase(), inst, name: `op ${kind}` };
  const res = http.get(url, params(tags));
  m.opReadMs.add(res.timings.duration, tags);
  m.opReads.add(1, { phase: tags.phase, inst, xcache: xcache(res) });
  record(res, [200], tags);
}

// ---------------------------------------------------------------- writers and checks

// Reports a stale read with everything needed to replay it.
function reportStale(kind, ctx, failures) {
  const line = JSON.stringify({ stale: kind, phase: phase(), ...ctx, failures });
  console.error(`STALE ${line}`);
}

// Page 1 of `status` through the gateway must list `id` when the MES's own page 1 (read
// right after) has it in its top 40 (further down, a concurrent write may push it off),
// and may never show it in a version older than our write. When the truth lists it in a
// later version than ours, someone else wrote it in between: superseded, not stale.
function newPageCheck(base, status, id, version, ack) {
  const tags = { role: 'checker', phase: phase(), name: 'check list p1' };
  const res = http.get(`${base}/api/orders?status=${status}`, params(tags));
  const ok = record(res, [200], tags);
  const gwItems = ok ? items(res) : [];
  const info = describe(res, ack);
  const truth = http.get(`${SIM}/api/orders?status=${status}`, params({ role: 'truth', name: 'truth list' }));
  m.truthLists.add(1, { phase: phase() });
  if (!ok) return { check: 'new_page', failed: true, gateway: info };
  const truthItems = items(truth);
  const pos = truthItems.findIndex((o) => o.id === id);
  const hit = gwItems.find((o) => o.id === id);
  info.listed_version = hit ? hit.version : null;
  info.first_ids = gwItems.slice(0, 3).map((o) => o.id);
  info.truth_first_ids = truthItems.slice(0, 3).map((o) => o.id);
  info.truth_pos = pos;
  info.truth_version = pos >= 0 ? truthItems[pos].version : null;
  if (hit && hit.version < version) return { check: 'new_page', stale: true, gateway: info };
  if (!hit && pos >= 0 && pos < 40) {
    if (truthItems[pos].version > version) return { check: 'new_page', superseded: true, gateway: info };
    return { check: 'new_page', stale: true, gateway: info };
  }
  return null;
}

// Page 1 of the old status through the gateway must not list the order in a version
// older than our write.
function oldPageCheck(base, status, id, version, ack) {
  const tags = { role: 'checker', phase: phase(), name: 'check list p1' };
  const res = http.get(`${base}/api/orders?status=${status}`, params(tags));
  if (!record(res, [200], tags)) return { check: 'old_page', failed: true, gateway: describe(res, ack) };
  const hit = items(res).find((o) => o.id === id);
  if (hit && hit.version < version) {
    const info = describe(res, ack);
    info.listed_version = hit.version;
    return { check: 'old_page', stale: true, gateway: info };
  }
  return null;
}

// The detail through the gateway must show our write (or a later one).
function detailCheck(base, id, version, ack) {
  const tags = { role: 'checker', phase: phase(), name: 'check detail' };
  const res = http.get(`${base}/api/orders/${id}`, params(tags));
  if (!record(res, [200], tags)) return { check: 'detail', failed: true, gateway: describe(res, ack) };
  const o = jsonOr(res, {}) || {};
  if (!(o.version >= version)) {
    const info = describe(res, ack);
    info.shown = { status: o.status, version: o.version };
    return { check: 'detail', stale: true, gateway: info };
  }
  return null;
}

// Tallies the checks. A detail or page showing the order in a version older than the
// write's is stale whatever else happened (versions only grow).
function tally(n, results, ctx) {
  m.checks.add(n, { phase: phase() });
  const sup = results.filter((r) => r && r.superseded).length;
  if (sup) m.superseded.add(sup, { phase: phase() });
  const stale = results.filter((r) => r && r.stale);
  if (stale.length === 0) return;
  for (const r of stale) m.stale.add(1, { phase: phase(), check: r.check });
  reportStale(ctx.kind, ctx, stale);
}

// B_STALE_AFTER_MS: 0 (two_instances) = no late read; run.sh sets 1500 for
// two_instances_outage.
const B_STALE_AFTER_MS = envNum('B_STALE_AFTER_MS', 0);

// Milliseconds since the scenario started (the clock of phase()), for the logs.
function sinceStart(t) {
  return t - exec.scenario.startTime;
}

// A read of the detail on B sent `sentAt`, `sentAt - ack` ms after A acknowledged the
// write of `version`: counts it as late (and stale when it shows an older version) once
// it was sent B_STALE_AFTER_MS or more after the acknowledgement.
function lateB(res, ok, sentAt, version, ack, ctx, tags, where) {
  if (!B_STALE_AFTER_MS || sentAt - ack < B_STALE_AFTER_MS) return;
  m.bLateReads.add(1, { phase: tags.phase });
  if (!ok) return;
  const o = jsonOr(res, {}) || {};
  if (o.version >= version) return;
  m.bStale.add(1, { phase: tags.phase });
  const info = describe(res, ack);
  info.shown = { status: o.status, version: o.version };
  info.sent_ms_after_ack = sentAt - ack;
  info.sent_at_s = (sinceStart(sentAt) / 1000).toFixed(3);
  info.phase = tags.phase;
  const ackAt = (sinceStart(ack) / 1000).toFixed(3);
  console.error(`B-STALE ${JSON.stringify({ where, ...ctx, ack_at_s: ackAt, b_answer: info })}`);
}

// Polls instance B's detail until it shows our write, bounded; records the time from the
// write's acknowledgement on A to the first answer from B that shows it (an upper bound:
// it includes B's refetch from the MES), and to the sending of that request.
function crossCheck(baseB, id, version, ack, ctx) {
  const timeout = envNum('CROSS_TIMEOUT_MS', 2000);
  const every = envNum('CROSS_POLL_MS', 5) / 1000;
  m.crossChecks.add(1, { phase: phase() });
  let last;
  for (let i = 0; i < 10000; i++) {
    const tags = { role: 'cross', phase: phase(), name: 'cross detail B', inst: 'B' };
    const sentAt = Date.now();
    const res = http.get(`${baseB}/api/orders/${id}`, params(tags));
    const ok = record(res, [200], tags);
    lateB(res, ok, sentAt, version, ack, ctx, tags, 'poll');
    if (ok) {
      const o = jsonOr(res, {}) || {};
      if (o.version >= version) {
        m.crossMs.add(Date.now() - ack);
        m.crossSentMs.add(sentAt - ack);
        return;
      }
      last = describe(res, ack);
      last.shown = { status: o.status, version: o.version };
      m.crossStalePolls.add(1);
    }
    if (Date.now() - ack >= timeout) break;
    sleep(every);
  }
  // Versions only grow: B still showing an older one after the bound is stale.
  m.crossStale2s.add(1, { phase: phase() });
  console.error(`CROSS-STALE ${JSON.stringify({ ...ctx, ms_after_ack: Date.now() - ack, last_b_answer: last })}`);
}

// One status change through `base`, then its own-read checks (and, with `baseB`, the
// cross-instance convergence check first, so it starts at the acknowledgement).
export function statusChange(base, baseB) {
  const from = pickStatus();
  const list = http.get(`${SIM}/api/orders?status=${from}`, params({ role: 'truth', name: 'truth list' }));
  m.truthLists.add(1, { phase: phase() });
  const candidates = items(list);
  if (candidates.length === 0) return;
  const id = candidates[randInt(candidates.length)].id;
  let to = pickStatus();
  while (to === from) to = pickStatus();
  if (baseB) {
    // Make sure B has the detail cached, so convergence measures the invalidation bus.
    const tags = { role: 'cross', phase: phase(), name: 'cross warm B', inst: 'B' };
    const w = http.get(`${baseB}/api/orders/${id}`, params(tags));
    m.crossWarmDetails.add(1);
    record(w, [200], tags);
  }
  const tags = { role: 'writer', phase: phase(), name: 'PATCH status' };
  const sent = Date.now();
  const res = http.patch(`${base}/api/orders/${id}/status`, JSON.stringify({ status: to }),
    params(tags, { headers: JSON_HEADERS }));
  const ack = Date.now();
  m.writeMs.add(res.timings.duration, tags);
  if (res.status === 409) {
    m.writeConflicts.add(1, tags);
    return;
  }
  if (!record(res, [200], tags)) return;
  const version = (jsonOr(res, {}) || {}).version;
  if (typeof version !== 'number') {
    m.failed.add(1, tags);
    return;
  }
  m.writes.add(1, { kind: 'change', phase: tags.phase });
  const ctx = {
    kind: 'status_change', id, from, to, version, sent_ms: sent, ack_ms: ack, write_phase: tags.phase,
    write: `PATCH ${base}/api/orders/${id}/status {"status":"${to}"} -> ${res.status} v${version} (${xcache(res)})`,
  };
  if (baseB) crossCheck(baseB, id, version, ack, ctx);
  const results = [
    detailCheck(base, id, version, ack),
    newPageCheck(base, to, id, version, ack),
    oldPageCheck(base, from, id, version, ack),
  ];
  tally(3, results, ctx);
  if (baseB && B_STALE_AFTER_MS) lateCheck(baseB, id, version, ack, ctx);
}

// After the convergence poll and A's own-read checks: waits until B_STALE_AFTER_MS after
// the acknowledgement and reads B's detail once more. Converging once is not enough: an
// instance that missed the invalidation could refill its cache with the old version.
function lateCheck(baseB, id, version, ack, ctx) {
  m.bChecks.add(1, { phase: ctx.write_phase });
  const wait = ack + B_STALE_AFTER_MS - Date.now();
  if (wait > 0) sleep(wait / 1000);
  const tags = { role: 'cross', phase: phase(), name: 'late detail B', inst: 'B' };
  const sentAt = Date.now();
  const res = http.get(`${baseB}/api/orders/${id}`, params(tags));
  lateB(res, record(res, [200], tags), sentAt, version, ack, ctx, tags, 'late');
}

// One order creation through `base`, then page 1 of SUBMITTED must list it.
export function createOrder(base) {
  const tags = { role: 'writer', phase: phase(), name: 'POST order' };
  const sent = Date.now();
  const res = http.post(`${base}/api/orders`, '{}', params(tags, { headers: JSON_HEADERS }));
  const ack = Date.now();
  m.writeMs.add(res.timings.duration, tags);
  if (!record(res, [201], tags)) return;
  const o = jsonOr(res, {}) || {};
  if (typeof o.id !== 'number') {
    m.failed.add(1, tags);
    return;
  }
  m.writes.add(1, { kind: 'create', phase: tags.phase });
  const ctx = {
    kind: 'create', id: o.id, to: o.status, version: o.version, sent_ms: sent, ack_ms: ack,
    write: `POST ${base}/api/orders {} -> ${res.status} id ${o.id} v${o.version}`,
  };
  tally(1, [newPageCheck(base, o.status || 'SUBMITTED', o.id, o.version, ack)], ctx);
}

// ---------------------------------------------------------------- the live shift

// Options of the live shift (live_shift, redis_outage, two_instances): OPERATORS
// closed-loop operators (THINK s between reads) on GW (and GW_B, every other VU), a
// status-change writer at CHANGES/s and a creation writer at CREATES/s
// (constant-arrival-rate), all for DURATION.
export function liveOptions(extraThresholds) {
  const duration = envStr('DURATION', '60s');
  const arrival = (rate) => ({
    executor: 'constant-arrival-rate',
    rate,
    timeUnit: '1s',
    duration,
    preAllocatedVUs: Math.max(10, rate * 5),
    maxVUs: Math.max(20, rate * 10),
    gracefulStop: '10s',
  });
  const scenarios = {
    operators: {
      executor: 'constant-vus',
      vus: envNum('OPERATORS', 32),
      duration,
      gracefulStop: '10s',
      exec: 'operators',
    },
  };
  const changes = envNum('CHANGES', 10);
  const creates = envNum('CREATES', 3);
  if (changes > 0) scenarios.changes = Object.assign(arrival(changes), { exec: 'changes' });
  if (creates > 0) scenarios.creates = Object.assign(arrival(creates), { exec: 'creates' });
  const t = {
    'op_read_ms{kind:list_p1}': ['p(99)>=0'],
    'op_read_ms{kind:list_p2}': ['p(99)>=0'],
    'op_read_ms{kind:detail}': ['p(99)>=0'],
    'op_read_ms{kind:counts}': ['p(99)>=0'],
    'writes_ok{kind:change}': ['count>=0'],
    'writes_ok{kind:create}': ['count>=0'],
    'stale_reads{check:detail}': ['count>=0'],
    'stale_reads{check:new_page}': ['count>=0'],
    'stale_reads{check:old_page}': ['count>=0'],
  };
  xcacheThresholds(t);
  for (const [k, v] of Object.entries(extraThresholds || {})) t[k] = v;
  return {
    scenarios,
    summaryTrendStats: TREND_STATS,
    thresholds: thresholds(t),
  };
}

const THINK = envNum('THINK', 0);

export function operatorsExec() {
  const useB = GW_B && exec.vu.idInTest % 2 === 0;
  operatorRead(useB ? GW_B : GW, useB ? 'B' : 'A');
  if (THINK > 0) sleep(THINK * (0.5 + Math.random()));
}

export function changesExec() {
  statusChange(GW, GW_B || undefined);
}

export function createsExec() {
  createOrder(GW);
}

export function liveSetup() {
  zeroCounters();
  return { before: simStats(), started_ms: Date.now() };
}

// ---------------------------------------------------------------- summary

export const TREND_STATS = ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)', 'count'];

// Thresholds: the targets (zero stale reads, zero failures), plus always-true ones that only
// make k6 keep the per-tag submetrics in the summary.
export function thresholds(extra) {
  const t = {
    stale_reads: ['count==0'],
    failed_requests: ['count==0'],
  };
  for (const [k, v] of Object.entries(extra || {})) t[k] = v;
  return t;
}

function fmt(v) {
  if (typeof v !== 'number') return String(v);
  return Number.isInteger(v) ? String(v) : v.toFixed(2);
}

// handleSummary: the full data as JSON (run.sh builds the tables from it) and a short text.
export function summary(name, data) {
  const lines = [`k6 ${name}: ${(data.state.testRunDurationMs / 1000).toFixed(1)} s`];
  const keys = Object.keys(data.metrics).sort();
  for (const k of keys) {
    const v = data.metrics[k].values;
    const th = data.metrics[k].thresholds;
    const bad = th && Object.values(th).some((x) => x.ok === false) ? '  THRESHOLD FAILED' : '';
    let s;
    if (data.metrics[k].type === 'trend') {
      s = `p50 ${fmt(v.med)} p95 ${fmt(v['p(95)'])} p99 ${fmt(v['p(99)'])} max ${fmt(v.max)}`;
    } else if (data.metrics[k].type === 'counter') {
      s = `${fmt(v.count)} (${fmt(v.rate)}/s)`;
    } else if (data.metrics[k].type === 'rate') {
      s = `${fmt(100 * v.rate)}% (${v.passes} of ${v.passes + v.fails})`;
    } else {
      s = JSON.stringify(v);
    }
    lines.push(`  ${k}: ${s}${bad}`);
  }
  const out = { stdout: lines.join('\n') + '\n' };
  out[`${RESULTS_DIR}/${name}.json`] = JSON.stringify(data, null, 1);
  return out;
}

export { exec, http, sleep };
