// Shift-start storm: a cold gateway (fresh L1, empty Redis), VUS operators open the
// dashboard at the same moment (page 1 of MANUFACTURING_APPROVED and SUBMITTED in
// parallel, then the status counts), then keep polling it every ~POLL_INTERVAL s for
// POLL_DURATION. Measures how many list requests reached the MES during the cold start
// (coalescing: at most one per distinct page per instance) and the latencies.
//
// Env: GW, SIM, VUS (200), POLL_DURATION (30s), POLL_INTERVAL (1, seconds, jittered
// 0.5x..1.5x), RESULTS_DIR. run.sh sets them.
import { http, sleep, exec, GW, SIM, envNum, envStr, simStats, zeroCounters, summary,
  thresholds, xcacheThresholds, xcache, TREND_STATS, m } from './lib.js';
import { Counter, Trend } from 'k6/metrics';

const VUS = envNum('VUS', 200);
const POLL_DURATION = envStr('POLL_DURATION', '30s');
const POLL_INTERVAL = envNum('POLL_INTERVAL', 1);
const TIMEOUT = envStr('REQ_TIMEOUT', '10s');

const DASHBOARD = [
  ['list_p1', `${GW}/api/orders?status=MANUFACTURING_APPROVED`],
  ['list_p1', `${GW}/api/orders?status=SUBMITTED`],
];
const COUNTS = `${GW}/api/orders/status-counts`;

const openMs = new Trend('dashboard_open_ms', true);
const readMs = new Trend('read_ms', true);
// Upstream requests (simulator counters minus the ones before the test) as seen by each
// operator right after its own dashboard opened: the max is the cold-start figure, read
// once the last operator had its dashboard.
const upListCold = new Trend('upstream_list_at_open');
const upCountsCold = new Trend('upstream_counts_at_open');
const opened = new Counter('dashboards_opened');

export const options = {
  scenarios: {
    shift_start: {
      executor: 'constant-vus',
      vus: VUS,
      duration: POLL_DURATION,
      gracefulStop: '10s',
    },
  },
  summaryTrendStats: TREND_STATS,
  thresholds: thresholds(xcacheThresholds({
    'read_ms{phase:cold}': ['p(99)>=0'],
    'read_ms{phase:poll}': ['p(99)>=0'],
    'read_ms{kind:list_p1}': ['p(99)>=0'],
    'read_ms{kind:counts}': ['p(99)>=0'],
  })),
};

export function setup() {
  zeroCounters();
  return { before: simStats() };
}

function get(kind, url, ph) {
  const tags = { role: 'operator', kind, phase: ph, name: `dash ${kind}` };
  return { method: 'GET', url, params: { timeout: TIMEOUT, tags } };
}

function account(res, kind, ph) {
  const tags = { role: 'operator', kind, phase: ph };
  readMs.add(res.timings.duration, tags);
  m.opReads.add(1, { phase: ph, xcache: xcache(res) });
  if (res.status !== 200) m.failed.add(1, tags);
}

function dashboard(ph) {
  const lists = http.batch(DASHBOARD.map(([k, u]) => get(k, u, ph)));
  lists.forEach((r) => account(r, 'list_p1', ph));
  const c = get('counts', COUNTS, ph);
  const counts = http.get(c.url, c.params);
  account(counts, 'counts', ph);
}

export default function (data) {
  if (exec.vu.iterationInScenario === 0) {
    const t0 = Date.now();
    dashboard('cold');
    openMs.add(Date.now() - t0);
    opened.add(1);
    const now = simStats();
    upListCold.add((now.list || 0) - (data.before.list || 0));
    upCountsCold.add((now.counts || 0) - (data.before.counts || 0));
  } else {
    dashboard('poll');
  }
  sleep(POLL_INTERVAL * (0.5 + Math.random()));
}

export function handleSummary(data) {
  return summary(envStr('NAME', 'shift_start'), data);
}
