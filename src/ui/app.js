// The operator page: the first page of each configured status, read through the gateway
// (GET /api/orders?status=S, the answer operators get, X-Cache included), kept current by
// GET /mesgate/events, and a control on each order that changes its status with
// `Prefer: respond-async`, whose outcome is shown under Operations.
//
// No framework, no build step: this file is served as it is (src/ui/mod.rs), as a module
// (strict mode).

// The MES's statuses in their usual order: the select offers the next one first.
const FLOW = ["SUBMITTED", "PRICE_CALCULATED", "MANUFACTURING_APPROVED", "MANUFACTURING_STARTED",
  "MANUFACTURING_COMPLETED", "SHIPPED", "DELIVERED", "CANCELLED"];

/** status -> { section, tbody, meta, error, loads } */
const lists = new Map();
/** operation id -> its entry under Operations, until its outcome is shown */
const waiting = new Map();
/** operation id -> its outcome event, when the event came before the 202 was read */
const early = new Map();
let live = false;

const $ = (sel, root = document) => root.querySelector(sel);

function el(tag, props = {}, ...children) {
  const e = Object.assign(document.createElement(tag), props);
  e.append(...children);
  return e;
}

// What an error body says: a problem JSON's title and detail (mesgate's), or the
// `error`/`message` field most JSON APIs use (the MES's), or the text itself.
function explain(body) {
  if (body && typeof body === "object") {
    const words = [body.title, body.detail, body.error, body.message].filter(Boolean);
    if (words.length) return words.join(": ");
  }
  return String(body ?? "").slice(0, 200);
}

// A failed answer in words: its status and what its body says.
async function describe(resp) {
  const text = await resp.text().catch(() => "");
  let body = text;
  try { body = JSON.parse(text); } catch { /* not JSON: shown as it came */ }
  return `${resp.status} ${explain(body) || resp.statusText}`;
}

function addList(status) {
  const section = $("#list-template").content.firstElementChild.cloneNode(true);
  section.dataset.status = status;
  section.setAttribute("aria-label", `Orders in ${status}`);
  $("h2", section).textContent = status;
  $("#lists").append(section);
  lists.set(status, {
    section, tbody: $("tbody", section), meta: $(".meta", section),
    error: $(".error", section), loads: 0,
  });
}

// Page 1 of `status`, as the gateway answers it. Only the newest load of a list is shown,
// so a slow answer cannot overwrite a newer one.
async function load(status) {
  const list = lists.get(status);
  if (!list) return;
  const n = ++list.loads;
  let resp;
  try {
    resp = await fetch(`/api/orders?status=${encodeURIComponent(status)}`);
  } catch (e) {
    return n === list.loads && showError(list, `request failed: ${e.message}`);
  }
  const body = resp.ok ? await resp.json().catch(() => null) : null;
  if (n !== list.loads) return;
  if (!resp.ok || !body || !Array.isArray(body.items)) {
    return showError(list, body ? "the answer lists no items" : await describe(resp));
  }
  showError(list, "");
  const cache = resp.headers.get("x-cache") || "-";
  list.meta.textContent = `${body.total} orders, ${body.items.length} shown · `
    + `${resp.status}, X-Cache: ${cache} · read ${new Date().toLocaleTimeString()}`;
  list.tbody.replaceChildren(...body.items.map((o) => row(o, status)));
}

function showError(list, message) {
  list.error.textContent = message;
  list.error.hidden = !message;
}

function row(order, status) {
  const id = String(order.id);
  const selectId = `to-${status}-${id}`;
  const select = el("select", { id: selectId, name: "status" });
  const next = FLOW[FLOW.indexOf(status) + 1];
  for (const s of FLOW.filter((s) => s !== status)) {
    select.append(el("option", { value: s, textContent: s, selected: s === next }));
  }
  const label = el("label", { htmlFor: selectId, className: "visually-hidden",
    textContent: `New status for order ${id}` });
  const button = el("button", { type: "submit", textContent: "Change" });
  button.setAttribute("aria-label", `Change status of order ${id}`);
  const form = el("form", {}, label, select, button);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    change(id, status, select.value, button);
  });
  const tr = el("tr", {}, el("td", { textContent: id }), el("td", { textContent: order.number ?? "" }),
    el("td", { textContent: order.customer ?? "" }), el("td", { textContent: order.created_at ?? "" }),
    el("td", {}, form));
  tr.dataset.order = id;
  return tr;
}

// Sends the change; its outcome comes from the `operation` event (or, with the event
// stream down, from polling the operation's Location).
async function change(order, from, to, button) {
  button.disabled = true;
  const entry = el("li");
  Object.assign(entry.dataset, { order, what: `order ${order}: ${from} → ${to}` });
  settle(entry, "sending", "PATCH, Prefer: respond-async");
  $("#operations").prepend(entry);
  $("#operations-empty").hidden = true;
  const resp = await fetch(`/api/orders/${encodeURIComponent(order)}/status`, {
    method: "PATCH",
    headers: { "content-type": "application/json", prefer: "respond-async" },
    body: JSON.stringify({ status: to }),
  }).catch((e) => e);
  // Disabled only while sending, against a double click.
  button.disabled = false;
  if (resp instanceof Error) return settle(entry, "failed", `request failed: ${resp.message}`);
  if (resp.status !== 202) {
    // Answered synchronously (the gateway could not queue it, e.g. without Redis): the
    // answer is the outcome, and no event will move the rows, so the lists are read again.
    settle(entry, resp.ok ? "succeeded" : "failed",
      resp.ok ? `${resp.status}, answered at once` : await describe(resp));
    return Promise.all([load(from), load(to)]);
  }
  const location = resp.headers.get("location") || "";
  const id = location.split("/").pop();
  Object.assign(entry.dataset, { operation: id, location });
  entry.dataset.what += ` (operation ${id})`;
  settle(entry, "queued", `202 Accepted, operation ${id}`);
  waiting.set(id, entry);
  if (early.has(id)) return outcome(early.get(id));
  if (!live) poll(location, id);
}

function settle(entry, state, words) {
  entry.dataset.state = state;
  entry.textContent = `${entry.dataset.what}: ${state} (${words})`;
}

// An operation's outcome: from its event, or from its record when polled. A failure's
// event does not carry the answer's body: the record (its Location) does.
async function outcome(op) {
  const entry = waiting.get(op.operation);
  if (!entry) {
    // Most are other clients' operations: only the newest few are kept.
    early.set(op.operation, op);
    if (early.size > 100) early.delete(early.keys().next().value);
    return;
  }
  if (op.state !== "succeeded" && op.state !== "failed") return;
  waiting.delete(op.operation);
  early.delete(op.operation);
  let detail = "";
  if (op.state === "failed") {
    const rec = "response" in op ? op
      : await fetch(entry.dataset.location).then((r) => r.json()).catch(() => ({}));
    detail = `: ${explain(rec.response)}`;
  }
  settle(entry, op.state, `answered ${op.status}${detail}`);
}

async function poll(location, id) {
  const entry = waiting.get(id);
  if (!entry || entry.dataset.polling) return;
  entry.dataset.polling = "yes";
  const until = Date.now() + 60_000;
  while (waiting.has(id) && !live && Date.now() < until) {
    const resp = await fetch(location).catch(() => null);
    if (resp && resp.ok) {
      outcome({ ...(await resp.json()), operation: id });
    } else if (resp && resp.status !== 503) {
      waiting.delete(id);
      settle(entry, "failed", await describe(resp));
    }
    await new Promise((r) => setTimeout(r, 500));
  }
  delete entry.dataset.polling;
}

function setLive(state, words) {
  live = state === "open";
  const p = $("#live");
  p.dataset.state = state;
  p.textContent = `Live updates: ${words}`;
  // Without the stream, outcomes still awaited are read from their records.
  if (!live) waiting.forEach((entry, id) => poll(entry.dataset.location, id));
}

function listen() {
  const events = new EventSource("/mesgate/events");
  events.addEventListener("open", () => setLive("open", "on"));
  events.addEventListener("error", () => {
    if (events.readyState === EventSource.CONNECTING) {
      return setLive("connecting", "reconnecting…");
    }
    // Refused (not an event stream): say why, from the problem JSON.
    setLive("closed", "off");
    const stop = new AbortController();
    fetch("/mesgate/events", { signal: stop.signal }).then(async (resp) => {
      if (!resp.ok) setLive("closed", `off (${await describe(resp)})`);
      stop.abort();
    }).catch(() => {});
  });
  // An order changed status: the lists it left and joined are read again (all of them
  // when the status it left is unknown).
  events.addEventListener("order", (e) => {
    const d = JSON.parse(e.data);
    const touched = d.previous ? [d.status, d.previous] : [...lists.keys()];
    touched.filter((s) => lists.has(s)).forEach(load);
  });
  events.addEventListener("operation", (e) => outcome(JSON.parse(e.data)));
  // Too far behind to resume: what was missed is unknown, so everything is read again.
  events.addEventListener("reset", () => [...lists.keys()].forEach(load));
}

async function start() {
  const resp = await fetch("/mesgate/ui/config.json");
  if (!resp.ok) throw new Error(await describe(resp));
  const config = await resp.json();
  config.statuses.forEach(addList);
  listen();
  await Promise.all(config.statuses.map(load));
}

start().catch((e) => {
  $("#failure").textContent = `The page could not start: ${e.message}`;
  $("#failure").hidden = false;
});
