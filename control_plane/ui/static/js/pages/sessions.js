// Sessions: create one, and the list with live state (polled every 3 s), a page at a time
// (the API's cursor: stable while sessions come and go), filtered by state. On a narrow
// screen the table keeps Session, State and Phone (docs/ui.md).

import { enc, features, get, getTenant, listOf, post } from "../api.js";
import { ago, badge, h, phone, poll, replace, toast } from "../dom.js";

const POLL_MS = 3000;
const PAGE_SIZES = [25, 100, 250];
const STATES = ["STARTING", "PAIRING", "CONNECTED", "DISCONNECTED", "RECONNECTING", "FAILED", "LOGGED_OUT", "STOPPED"];

function createForm(navigate) {
  const id = h("input", {
    id: "new-session-id",
    name: "session_id",
    placeholder: "optional, e.g. sales-1",
    pattern: "[A-Za-z0-9_\\-]{1,64}",
    title: "letters, digits, _ and -, up to 64",
    autocomplete: "off",
  });
  const engine = h(
    "select",
    { id: "new-session-engine", name: "engine" },
    h("option", { value: "" }, "server default"),
    h("option", { value: "sim" }, "sim (simulated network)"),
    h("option", { value: "neonize" }, "neonize (WhatsApp)"),
  );
  const device = h("input", { id: "new-session-device", name: "device_name", placeholder: "zapfleet", autocomplete: "off" });
  const webhook = h("input", { id: "new-session-webhook", name: "webhook_url", type: "url", placeholder: "https://… (optional)" });
  const error = h("p", { class: "error", hidden: true });
  const submit = h("button", { type: "submit", class: "primary", id: "create-session" }, "Create session");
  const form = h(
    "form",
    { class: "card", id: "create-session-form" },
    h("h2", {}, "New session"),
    h(
      "div",
      { class: "grid" },
      h("label", {}, "Session id", id),
      h("label", {}, "Engine", engine),
      h("label", {}, "Device name", device),
      h("label", {}, "Webhook URL", webhook),
    ),
    error,
    submit,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {};
    if (id.value.trim()) body.session_id = id.value.trim();
    if (engine.value) body.engine = engine.value;
    if (device.value.trim()) body.device_name = device.value.trim();
    if (webhook.value.trim()) body.webhook_url = webhook.value.trim();
    submit.disabled = true;
    error.hidden = true;
    try {
      const created = await post("/v1/sessions", body);
      toast(`Session ${created.session_id} created on ${created.node_id || "no node"}`);
      navigate(`#/sessions/${enc(created.session_id)}`);
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

function openById(navigate) {
  const input = h("input", { id: "open-session-id", placeholder: "session id", required: true, autocomplete: "off" });
  const form = h("form", { class: "inline" }, input, h("button", { type: "submit" }, "Open"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (input.value.trim()) navigate(`#/sessions/${enc(input.value.trim())}`);
  });
  return form;
}

function row(s) {
  return h(
    "tr",
    { dataset: { session: s.session_id } },
    h("td", { class: "id" }, h("a", { href: `#/sessions/${enc(s.session_id)}` }, s.session_id)),
    h("td", {}, badge(s.state)),
    h("td", { class: "nowrap" }, phone(s.phone)),
    h("td", { class: "optional" }, s.engine || "–"),
    h("td", { class: "optional" }, s.node_id || "–"),
    h("td", { class: "num optional" }, String(s.queue_depth ?? 0)),
    h("td", { class: "optional nowrap" }, ago(s.since)),
  );
}

const COLUMNS = [
  ["Session", ""],
  ["State", ""],
  ["Phone", ""],
  ["Engine", "optional"],
  ["Node", "optional"],
  ["Queue", "optional"],
  ["Since", "optional"],
];

// The page being looked at: its cursor (null: the first page), the cursors of the pages
// before it (for "Previous"), the page size and the state filter.
function pager(onChange) {
  const size = h(
    "select",
    { id: "sessions-page-size", title: "sessions per page" },
    PAGE_SIZES.map((n) => h("option", { value: String(n), selected: n === 100 || null }, `${n} per page`)),
  );
  const state = h(
    "select",
    { id: "sessions-state", title: "only sessions in this state" },
    h("option", { value: "" }, "every state"),
    STATES.map((s) => h("option", { value: s }, s)),
  );
  const prev = h("button", { type: "button", id: "sessions-prev", disabled: true }, "← Previous");
  const next = h("button", { type: "button", id: "sessions-next", disabled: true }, "Next →");
  const page = { cursor: null, before: [], next: null, first: 1 };
  const reset = () => {
    Object.assign(page, { cursor: null, before: [], next: null, first: 1 });
    onChange();
  };
  size.addEventListener("change", reset);
  state.addEventListener("change", reset);
  next.addEventListener("click", () => {
    if (!page.next) return;
    page.before.push([page.cursor, page.first]);
    page.first += page.shown;
    page.cursor = page.next;
    onChange();
  });
  prev.addEventListener("click", () => {
    if (!page.before.length) return;
    [page.cursor, page.first] = page.before.pop();
    onChange();
  });
  return {
    controls: h("div", { class: "inline", id: "sessions-pager" }, state, size, prev, next),
    query() {
      const q = new URLSearchParams({ limit: size.value });
      if (state.value) q.set("state", state.value);
      if (page.cursor) q.set("cursor", page.cursor);
      return `?${q}`;
    },
    // what the page shows: "26–50 of 73"; enables the buttons
    shown(count, total, nextCursor) {
      page.shown = count;
      page.next = nextCursor || null;
      next.disabled = !page.next;
      prev.disabled = !page.before.length;
      if (!count) return page.before.length ? "No sessions on this page any more." : null;
      return `${page.first}–${page.first + count - 1} of ${total}`;
    },
  };
}

export function mount(view, { me, navigate }) {
  const tenant = me && me.is_admin ? getTenant() || "default" : null;
  const listBody = h("tbody", { id: "sessions-rows" });
  const status = h("p", { class: "muted", id: "sessions-status" }, "Loading…");
  let refresh = () => {};
  const pages = pager(() => refresh());
  const listCard = h(
    "section",
    { class: "card" },
    h(
      "div",
      { class: "card-head" },
      h("h2", {}, "Sessions", tenant ? h("span", { class: "muted", id: "sessions-tenant" }, ` · tenant ${tenant}`) : null),
      openById(navigate),
    ),
    pages.controls,
    status,
    h(
      "table",
      { class: "table", id: "sessions-table" },
      h(
        "thead",
        {},
        h("tr", {}, COLUMNS.map(([t, cls]) => h("th", { class: cls || null }, t))),
      ),
      listBody,
    ),
  );
  replace(view, h("div", { class: "stack" }, listCard, createForm(navigate)));

  let stop = () => {};
  let alive = true;
  features().then((f) => {
    if (!alive) return;
    if (!f.has("GET", "/v1/sessions")) {
      status.textContent = "This server does not list sessions; open one by id.";
      return;
    }
    // the server orders by name; a click shows the new page at once, the poll keeps it live
    let latest = 0;
    const load = async () => {
      const asked = ++latest;
      try {
        const body = await get(`/v1/sessions${pages.query()}`);
        if (asked !== latest || !alive) return; // a newer page was asked for meanwhile
        const sessions = listOf(body, "sessions");
        replace(listBody, sessions.map(row));
        const range = pages.shown(sessions.length, body.total ?? sessions.length, body.next_cursor);
        status.textContent = range ? `Sessions ${range}, live` : "No sessions yet.";
        status.classList.remove("error");
      } catch (err) {
        status.textContent = `Cannot list sessions: ${err.message}`;
        status.classList.add("error");
      }
    };
    refresh = () => {
      load();
    };
    stop = poll(load, POLL_MS);
  });
  return () => {
    alive = false;
    stop();
  };
}
