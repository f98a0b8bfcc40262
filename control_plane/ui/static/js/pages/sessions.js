// Sessions: create one, and the list with live state (polled every 3 s). On a narrow
// screen the table keeps Session, State and Phone (docs/ui.md).

import { enc, features, get, getTenant, listOf, post } from "../api.js";
import { ago, badge, h, phone, poll, replace, toast } from "../dom.js";

const POLL_MS = 3000;

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

export function mount(view, { me, navigate }) {
  const tenant = me && me.is_admin ? getTenant() || "default" : null;
  const listBody = h("tbody", { id: "sessions-rows" });
  const status = h("p", { class: "muted", id: "sessions-status" }, "Loading…");
  const listCard = h(
    "section",
    { class: "card" },
    h(
      "div",
      { class: "card-head" },
      h("h2", {}, "Sessions", tenant ? h("span", { class: "muted", id: "sessions-tenant" }, ` · tenant ${tenant}`) : null),
      openById(navigate),
    ),
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
    stop = poll(async () => {
      try {
        const sessions = listOf(await get("/v1/sessions"), "sessions");
        sessions.sort((a, b) => String(a.session_id).localeCompare(String(b.session_id)));
        replace(listBody, sessions.map(row));
        status.textContent = sessions.length ? `${sessions.length} session(s), live` : "No sessions yet.";
        status.classList.remove("error");
      } catch (err) {
        status.textContent = `Cannot list sessions: ${err.message}`;
        status.classList.add("error");
      }
    }, POLL_MS);
  });
  return () => {
    alive = false;
    stop();
  };
}
