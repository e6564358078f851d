// The live shift across two gateways on one Redis: writes and their own-read checks on
// instance A (GW), operators on both (every other VU on GW_B), and after every status
// change a cross-instance check: B's detail (read once before the write, so B has it
// cached) is polled every CROSS_POLL_MS until it shows the write, at most
// CROSS_TIMEOUT_MS; the time from A's acknowledgement to B's first fresh answer goes
// into cross_converge_ms, and B still stale at the bound into cross_stale_beyond_2s.
//
// Env: as live_shift.js, plus GW_B, CROSS_TIMEOUT_MS (2000), CROSS_POLL_MS (5).
import { liveOptions, liveSetup, operatorsExec, changesExec, createsExec, summary,
  envStr } from './lib.js';

export const options = liveOptions({
  cross_stale_beyond_2s: ['count==0'],
  'op_read_ms{inst:A}': ['p(99)>=0'],
  'op_read_ms{inst:B}': ['p(99)>=0'],
});
export const setup = liveSetup;
export const operators = operatorsExec;
export const changes = changesExec;
export const creates = createsExec;
export function handleSummary(data) {
  return summary(envStr('NAME', 'two_instances'), data);
}
