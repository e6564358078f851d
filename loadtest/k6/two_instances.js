// The live shift across two gateways on one Redis: writes and their own-read checks on
// instance A (GW), operators on both (every other VU on GW_B), and after every status
// change a cross-instance check: B's detail (read once before the write, so B has it
// cached) is polled every CROSS_POLL_MS until it shows the write, at most
// CROSS_TIMEOUT_MS; the time from A's acknowledgement to B's first fresh answer goes
// into cross_converge_ms, and B still stale at the bound into cross_stale_beyond_2s.
//
// two_instances_outage (run.sh) runs this script with Redis stopped from OUTAGE_AT s for
// OUTAGE_LEN s (every request tagged phase=before|during|after, as in redis_outage.js) and
// B_STALE_AFTER_MS=1500: after A's own-read checks the writer reads B's detail once more
// B_STALE_AFTER_MS after the acknowledgement, and any read of B sent that late (this one
// or a convergence poll) that shows an older version is a stale read on B
// (b_stale_reads{phase}, a B-STALE line in the log).
//
// Env: as live_shift.js, plus GW_B, CROSS_TIMEOUT_MS (2000), CROSS_POLL_MS (5),
// OUTAGE_AT and OUTAGE_LEN (s; 0 = no phases), B_STALE_AFTER_MS (0 = no late read).
import { liveOptions, liveSetup, operatorsExec, changesExec, createsExec, summary,
  envStr, envNum } from './lib.js';

const t = {
  cross_stale_beyond_2s: ['count==0'],
  'op_read_ms{inst:A}': ['p(99)>=0'],
  'op_read_ms{inst:B}': ['p(99)>=0'],
};
if (envNum('B_STALE_AFTER_MS', 0) > 0) {
  t.b_stale_reads = ['count==0'];
  t.b_checks = ['count>=0'];
  t.b_late_reads = ['count>=0'];
}
if (envNum('OUTAGE_AT', 0) > 0) {
  for (const ph of ['before', 'during', 'after']) {
    for (const c of ['b_checks', 'b_late_reads', 'b_stale_reads', 'cross_stale_beyond_2s',
      'cross_checks', 'failed_requests', 'stale_reads', 'own_checks', 'op_reads', 'writes_ok',
      'truth_list_reads', 'stale_if_error_served']) {
      t[`${c}{phase:${ph}}`] = ['count>=0'];
    }
    t[`op_read_ms{phase:${ph}}`] = ['p(99)>=0'];
    t[`op_read_ms{phase:${ph},inst:B}`] = ['p(99)>=0'];
    t[`write_ms{phase:${ph}}`] = ['p(99)>=0'];
  }
}

export const options = liveOptions(t);
export const setup = liveSetup;
export const operators = operatorsExec;
export const changes = changesExec;
export const creates = createsExec;
export function handleSummary(data) {
  return summary(envStr('NAME', 'two_instances'), data);
}
