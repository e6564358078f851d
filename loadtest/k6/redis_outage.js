// The live shift with Redis killed in the middle: run.sh kills redis-server OUTAGE_AT s
// after the test's first request and restarts it on the same port (empty: no
// persistence) OUTAGE_LEN s later. Every request is tagged phase=before|during|after by
// its send time relative to the scenario start, so latency, failures and stale reads are
// reported per phase.
//
// Env: as live_shift.js, plus OUTAGE_AT (s), OUTAGE_LEN (s).
import { liveOptions, liveSetup, operatorsExec, changesExec, createsExec, summary,
  envStr } from './lib.js';

const perPhase = {};
for (const ph of ['before', 'during', 'after']) {
  perPhase[`op_read_ms{phase:${ph}}`] = ['p(99)>=0'];
  perPhase[`op_read_ms{phase:${ph},kind:list_p1}`] = ['p(99)>=0'];
  perPhase[`write_ms{phase:${ph}}`] = ['p(99)>=0'];
  perPhase[`failed_requests{phase:${ph}}`] = ['count>=0'];
  perPhase[`stale_reads{phase:${ph}}`] = ['count>=0'];
  perPhase[`own_checks{phase:${ph}}`] = ['count>=0'];
  perPhase[`op_reads{phase:${ph}}`] = ['count>=0'];
  perPhase[`writes_ok{phase:${ph}}`] = ['count>=0'];
  perPhase[`stale_if_error_served{phase:${ph}}`] = ['count>=0'];
}

export const options = liveOptions(perPhase);
export const setup = liveSetup;
export const operators = operatorsExec;
export const changes = changesExec;
export const creates = createsExec;
export function handleSummary(data) {
  return summary(envStr('NAME', 'redis_outage'), data);
}
