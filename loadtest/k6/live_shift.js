// The live shift: operators poll hot statuses (MANUFACTURING_APPROVED and SUBMITTED
// hottest, page 1 mostly, some page 2, details, counts) while a writer changes ~CHANGES
// statuses/s and another creates ~CREATES orders/s through the gateway. After every
// acknowledged write the writer checks its own read through the gateway (the detail shows
// the write; page 1 of the new status lists the order when the MES's own page 1, read
// straight from the simulator, has it in its top 40; page 1 of the old status does not
// list it in a pre-write version) and counts stale reads.
//
// Env: GW, SIM, DURATION (60s), OPERATORS (32), THINK (0 s), CHANGES (10/s),
// CREATES (3/s), RESULTS_DIR, NAME. run.sh sets them.
import { liveOptions, liveSetup, operatorsExec, changesExec, createsExec, summary,
  envStr } from './lib.js';

export const options = liveOptions();
export const setup = liveSetup;
export const operators = operatorsExec;
export const changes = changesExec;
export const creates = createsExec;
export function handleSummary(data) {
  return summary(envStr('NAME', 'live_shift'), data);
}
