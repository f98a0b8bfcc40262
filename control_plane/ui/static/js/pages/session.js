// One session: live state, the pairing QR (refreshed whenever the code rotates, replaced
// by "Connected" as soon as a phone scans it), a test message form and the lifecycle
// actions the server offers.

import { DEFAULT_TENANT, del, enc, features, get, getTenant, post } from "../api.js";
import { ago, badge, confirmAction, h, phone, poll, replace, toast } from "../dom.js";

const POLL_MS = 1500;
const PAIRING_STATES = new Set(["STARTING", "PAIRING"]);
// The states of a session that runs (contract/protocol.py SessionState); FAILED,
// LOGGED_OUT and STOPPED are not running (FAILED: the circuit breaker is open).
const LIVE = new Set(["STARTING", "PAIRING", "CONNECTED", "DISCONNECTED", "RECONNECTING"]);
const RUNNING_OR_FAILED = new Set([...LIVE, "FAILED"]);
const PAIRED = new Set(["CONNECTED", "DISCONNECTED", "RECONNECTING", "FAILED"]);

// Lifecycle actions (POST /v1/sessions/{id}/<action>), in the order they are shown, with
// what each one does. Log out and Delete ask first.
const ACTIONS = {
  start: { label: "Start", title: "Run the session on a node: a paired device reconnects, otherwise a new QR code is shown." },
  stop: { label: "Stop", title: "Stop running the session. The device stays paired: Start resumes it without scanning again." },
  restart: { label: "Restart", title: "Restart the session's connection on its node." },
  reconnect: { label: "Force reconnect", title: "Reconnect now instead of waiting for the next retry." },
  "reset-breaker": { label: "Reset circuit breaker", title: "Close the open circuit breaker and reconnect now." },
  logout: { label: "Log out", title: "Unlink the WhatsApp device; the session is kept (stopped) and can be paired again.", confirm: true },
};

// The actions that make sense for a session in this state: no Start on a running session,
// no Stop on a stopped one, no Log out on one without a paired device. A FAILED session
// (circuit breaker open) still runs: it is reconnected or its breaker reset, not started.
export function validActions(s) {
  const running = s.desired === "running";
  const out = [];
  if (!(running && RUNNING_OR_FAILED.has(s.state))) out.push("start");
  if (running && RUNNING_OR_FAILED.has(s.state)) out.push("stop");
  if (running && LIVE.has(s.state) && s.state !== "STARTING") out.push("restart");
  if (running && ["DISCONNECTED", "RECONNECTING", "FAILED"].includes(s.state)) out.push("reconnect");
  if (running && s.state === "FAILED") out.push("reset-breaker");
  if (running && s.phone && PAIRED.has(s.state)) out.push("logout");
  return out;
}

function confirmLogout(s) {
  return confirmAction({
    title: `Log out ${s.session_id}?`,
    text: [
      `This unlinks the WhatsApp device${s.phone ? ` ${phone(s.phone)}` : ""} from the session and stops it. The phone shows it as removed from its linked devices.`,
      "The session and its settings are kept: Start it and scan a new QR code to use it again. To pause it and keep the device paired, use Stop instead.",
    ],
    confirm: "Log out",
  });
}

function confirmDelete(s) {
  return confirmAction({
    title: `Delete ${s.session_id}?`,
    text: [
      `This unlinks the WhatsApp device${s.phone ? ` ${phone(s.phone)}` : ""}, destroys its state (device keys and their backups) and deletes the session with its settings. It cannot be undone; using the number again means pairing a new session.`,
      "To pause it and keep the device paired, use Stop instead.",
    ],
    confirm: "Delete session",
  });
}

function details(s) {
  const rows = [
    ["State", badge(s.state)],
    ["Phone", phone(s.phone)],
    ["Engine", s.engine],
    ["Node", s.node_id || "–"],
    ["Epoch", s.epoch ?? "–"],
    ["Desired", s.desired],
    ["Since", ago(s.since)],
    ["Send queue", String(s.queue_depth ?? 0)],
    ["Reason", s.reason || "–"],
    ["Webhook", s.webhook_url || "–"],
  ];
  return h("dl", { class: "details", id: "session-details" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function sendForm(sessionId) {
  const to = h("input", { id: "message-to", name: "to", required: true, placeholder: "+15550001111", autocomplete: "off" });
  const text = h("input", { id: "message-text", name: "text", required: true, placeholder: "hello from zapfleet", autocomplete: "off" });
  const result = h("p", { class: "muted", id: "message-result" });
  const submit = h("button", { type: "submit", class: "primary", id: "send-message", disabled: true }, "Send");
  const hint = h("span", { class: "muted", id: "send-hint" }, " The session must be connected to send.");
  const form = h(
    "form",
    { class: "card", id: "send-form" },
    h("h2", {}, "Send a test message"),
    h("div", { class: "grid" }, h("label", {}, "To", to), h("label", {}, "Text", text)),
    submit,
    hint,
    result,
  );
  let connected = false;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    result.classList.remove("error");
    try {
      const accepted = await post(`/v1/sessions/${enc(sessionId)}/messages`, {
        type: "text",
        to: to.value.trim(),
        text: text.value,
      });
      result.textContent = `Queued as ${accepted.message_id} (queue depth ${accepted.queue_depth}).`;
      result.dataset.messageId = accepted.message_id;
    } catch (err) {
      result.textContent = `Not sent: ${err.message}`;
      result.classList.add("error");
    } finally {
      submit.disabled = !connected;
    }
  });
  const setConnected = (value) => {
    connected = value;
    submit.disabled = !value;
    hint.hidden = value;
  };
  return { form, setConnected };
}

function actionBar(f, navigate, refresh) {
  const bar = h("div", { class: "actions", id: "session-actions" });
  const help = h(
    "p",
    { class: "muted small", id: "actions-help" },
    "Stop keeps the device paired. Log out unlinks the device but keeps the session. Delete unlinks the device and removes the session and its state.",
  );
  const box = h("div", {}, bar, help);
  const offered = new Set(f.list("POST", /^\/v1\/sessions\/\{\}\/([a-z_-]+)$/).map((m) => m[1]));
  const canDelete = f.has("DELETE", "/v1/sessions/{}");
  // a server whose DELETE only unlinks when asked is asked (docs/ui.md)
  const deleteQuery = f.query("DELETE", "/v1/sessions/{}").includes("logout") ? "?logout=true" : "";
  let shown = null;
  let current = null;

  const run = async (button, label, call) => {
    button.disabled = true;
    try {
      await call();
      toast(`${label}: done`);
      refresh();
    } catch (err) {
      toast(`${label} failed: ${err.message}`, "error");
    } finally {
      button.disabled = false;
    }
  };

  const button = (action) => {
    const { label, title, confirm } = ACTIONS[action];
    const el = h("button", { type: "button", dataset: { action }, title }, label);
    el.addEventListener("click", async () => {
      const s = current;
      if (confirm && !(await confirmLogout(s))) return;
      run(el, label, () => post(`/v1/sessions/${enc(s.session_id)}/${action}`));
    });
    return el;
  };

  const deleteButton = () => {
    const el = h(
      "button",
      { type: "button", class: "danger", dataset: { action: "delete" }, title: "Unlink the device, destroy its state and delete the session." },
      "Delete",
    );
    el.addEventListener("click", async () => {
      const s = current;
      if (!(await confirmDelete(s))) return;
      el.disabled = true;
      try {
        await del(`/v1/sessions/${enc(s.session_id)}${deleteQuery}`);
        toast(`Session ${s.session_id} deleted`);
        navigate("#/sessions");
      } catch (err) {
        toast(`Delete failed: ${err.message}`, "error");
        el.disabled = false;
      }
    });
    return el;
  };

  // Called with every fresh read of the session; redraws the buttons only when the set of
  // valid actions changes.
  const update = (s) => {
    current = s;
    const actions = validActions(s).filter((a) => offered.has(a));
    if (canDelete) actions.push("delete");
    const key = actions.join(" ");
    if (key === shown) return;
    shown = key;
    bar.dataset.state = s.state;
    replace(bar, actions.map((a) => (a === "delete" ? deleteButton() : button(a))));
  };
  return { box, update };
}

function missing(sessionId) {
  const tenant = getTenant();
  const where = tenant && tenant !== DEFAULT_TENANT ? ` in tenant ${tenant}` : "";
  return h(
    "section",
    { class: "card notice", id: "session-missing" },
    h("h1", {}, "Session not found"),
    h("p", {}, `There is no session "${sessionId}"${where}. It may have been deleted, or the link is mistyped.`),
    h("p", {}, h("a", { href: "#/sessions" }, "← All sessions")),
  );
}

export function mount(view, { arg: sessionId, navigate }) {
  replace(view, h("p", { class: "muted", id: "session-loading" }, "Loading…"));
  let alive = true;
  let page = null;
  let stopPolling = () => {};
  let objectUrl = null;

  // The page is built on the first successful read: an unknown id shows one message only.
  function build() {
    const title = h(
      "h1",
      {},
      h("a", { href: "#/sessions", class: "muted" }, "Sessions"),
      " / ",
      sessionId,
      " ",
      h("a", { href: `#/chats/${enc(sessionId)}`, id: "open-conversations", class: "small" }, "Conversations"),
      " ",
      h("a", { href: `#/contacts/${enc(sessionId)}`, id: "open-contacts", class: "small" }, "Contacts"), // issue 16
      " ",
      h("a", { href: `#/groups/${enc(sessionId)}`, id: "open-groups", class: "small" }, "Groups"), // groups (issue 16)
    );
    const detailBox = h("div", {}, h("p", { class: "muted" }, "Loading…"));
    const error = h("p", { class: "error", id: "session-error", hidden: true });
    const qrImage = h("img", { id: "qr-image", alt: "QR code to scan with WhatsApp", width: 264, height: 264, hidden: true });
    const qrCaption = h("p", { class: "muted", id: "qr-caption" }, "Waiting for the session to start…");
    const pairing = h(
      "section",
      { class: "card pairing", id: "pairing", "data-state": "" },
      h("h2", {}, "Pairing"),
      h("div", { class: "qr-frame" }, qrImage),
      qrCaption,
    );
    const actions = h("div");
    const sender = sendForm(sessionId);
    replace(
      view,
      h(
        "div",
        { class: "stack" },
        title,
        error,
        h("div", { class: "columns" }, pairing, h("section", { class: "card" }, h("h2", {}, "Details"), detailBox, actions)),
        sender.form,
      ),
    );
    const built = { detailBox, error, qrImage, qrCaption, pairing, sender, bar: null, last: null, shownCode: null };
    features().then((f) => {
      if (!alive) return;
      built.bar = actionBar(f, navigate, tick);
      replace(actions, built.bar.box);
      if (built.last) built.bar.update(built.last);
    });
    return built;
  }

  async function showQr(p) {
    const qr = await get(`/ui/api/sessions/${enc(sessionId)}/qr`);
    if (!alive) return;
    if (!qr.qr) {
      p.qrImage.hidden = true;
      return;
    }
    if (qr.qr === p.shownCode) return;
    const url = URL.createObjectURL(new Blob([qr.svg], { type: "image/svg+xml" }));
    p.qrImage.onload = () => {
      if (objectUrl && objectUrl !== url) URL.revokeObjectURL(objectUrl);
      objectUrl = url;
    };
    p.qrImage.src = url;
    p.qrImage.hidden = false;
    p.qrImage.dataset.code = qr.qr;
    p.shownCode = qr.qr;
    const seconds = Math.max(0, Math.round(qr.expires_at - Date.now() / 1000));
    p.qrCaption.textContent = `Open WhatsApp › Linked devices › Link a device, and scan. This code rotates in about ${seconds} s; the page follows.`;
  }

  async function tick() {
    let s;
    try {
      s = await get(`/v1/sessions/${enc(sessionId)}`);
    } catch (err) {
      if (!alive) return;
      if (err.status === 404) {
        stopPolling();
        replace(view, missing(sessionId));
        page = null;
        return;
      }
      const text = `Cannot read the session: ${err.message}`;
      if (page) {
        page.error.textContent = text;
        page.error.hidden = false;
      } else {
        replace(view, h("p", { class: "error", id: "session-error" }, text));
      }
      return;
    }
    if (!alive) return;
    if (!page) page = build();
    const p = page;
    p.error.hidden = true;
    p.last = s;
    if (p.bar) p.bar.update(s);
    replace(p.detailBox, details(s));
    p.pairing.dataset.state = s.state;
    p.pairing.classList.toggle("is-connected", s.state === "CONNECTED");
    p.sender.setConnected(s.state === "CONNECTED");
    if (s.state === "CONNECTED") {
      p.qrImage.hidden = true;
      p.shownCode = null;
      replace(p.qrCaption, h("span", { class: "connected", id: "connected" }, `Connected as ${phone(s.phone)}`));
    } else if (PAIRING_STATES.has(s.state) && s.desired === "running") {
      if (s.state === "STARTING") p.qrCaption.textContent = "Starting…";
      await showQr(p);
    } else {
      p.qrImage.hidden = true;
      p.shownCode = null;
      p.qrCaption.textContent = `The session is ${s.state}${s.reason ? `: ${s.reason}` : ""}.`;
    }
  }

  stopPolling = poll(tick, POLL_MS);
  return () => {
    alive = false;
    stopPolling();
    if (objectUrl) URL.revokeObjectURL(objectUrl);
  };
}
