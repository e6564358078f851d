// Drives the operator page in headless Chromium: node ui.mjs http://127.0.0.1:PORT/mesgate/ui
//
// Loads the page, sees the MANUFACTURING_APPROVED list, changes its first order's status
// with the page's own control, and sees, without a reload, the row leave that list, appear
// in the MANUFACTURING_STARTED list, and the operation shown as succeeded; then sees a
// refused change (409 from the MES) shown as failed, with the MES's words. Every wait has
// a deadline; no fixed sleeps. Prints one JSON line of what it did (read by
// tests/browser.rs); exits 1 with the reason on any failure.
import { chromium } from "playwright-core";

const FROM = "MANUFACTURING_APPROVED";
const TO = "MANUFACTURING_STARTED";
const DEADLINE_MS = 30_000;

const url = process.argv[2];
if (!url) {
  console.error("usage: node ui.mjs URL-of-the-page");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  // The tests run as root in CI containers, where Chromium's sandbox cannot start
  // (it needs user namespaces or a setuid helper); the page is our own, on 127.0.0.1.
  // /dev/shm is small in containers: shared memory in /tmp instead.
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
  timeout: DEADLINE_MS,
});
let failed = false;
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(DEADLINE_MS);
  const errors = [];
  page.on("pageerror", (e) => errors.push(`page error: ${e.message}`));
  page.on("console", (m) => m.type() === "error" && errors.push(`console: ${m.text()}`));

  await page.goto(url);
  const from = page.locator(`section[data-status="${FROM}"]`);
  const to = page.locator(`section[data-status="${TO}"]`);
  await from.locator("tbody tr").first().waitFor();
  // The stream is open before the change: its events are what must move the row.
  await page.locator('#live[data-state="open"]').waitFor();
  const xCache = await from.locator(".meta").textContent();
  if (!/X-Cache: (MISS|HIT-L1|HIT-L2|HIT-INDEX)/.test(xCache)) throw new Error(`no X-Cache shown: ${xCache}`);

  // A mark on this document: still there at the end means the page was not reloaded.
  await page.evaluate(() => { window.notReloaded = true; });
  const row = from.locator("tbody tr").first();
  const order = await row.getAttribute("data-order");
  await row.getByLabel(`New status for order ${order}`).selectOption(TO);
  await row.getByRole("button", { name: `Change status of order ${order}` }).click();

  await from.locator(`tr[data-order="${order}"]`).waitFor({ state: "detached" });
  await to.locator(`tr[data-order="${order}"]`).waitFor();
  const done = page.locator(`#operations li[data-order="${order}"][data-state="succeeded"]`);
  await done.waitFor();
  const operation = await done.getAttribute("data-operation");
  const shown = await done.textContent();

  // An error is shown as the MES or mesgate put it: the next order's change is sent
  // with the status it already has (rewritten on its way out), which the MES refuses.
  const other = await from.locator("tbody tr").first().getAttribute("data-order");
  await page.route(`**/api/orders/${other}/status`, (r) =>
    r.continue({ postData: JSON.stringify({ status: FROM }) }));
  await from.locator(`tr[data-order="${other}"]`).getByRole("button").click();
  const refused = page.locator(`#operations li[data-order="${other}"][data-state="failed"]`);
  const failure = await refused.textContent();
  if (!/answered 409: order \d+ is already MANUFACTURING_APPROVED/.test(failure)) {
    throw new Error(`the refusal is not shown as the MES put it: ${failure}`);
  }

  if (!(await page.evaluate(() => window.notReloaded === true))) {
    throw new Error("the page was reloaded");
  }
  if (errors.length) throw new Error(errors.join("\n"));
  console.log(JSON.stringify({ order: Number(order), from: FROM, to: TO, operation, shown, failure }));
} catch (e) {
  failed = true;
  console.error(`ui.mjs: ${e.message}`);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
