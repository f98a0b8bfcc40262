// One session: live state, the pairing QR (refreshed whenever the code rotates, replaced
// by "Connected" as soon as a phone scans it), a test message form and the lifecycle
// actions the server offers.

import { del, enc, features, get, post } from "../api.js";
import { ago, badge, h, phone, poll, replace, toast } from "../dom.js";

const POLL_MS = 1500;
const PAIRING_STATES = new Set(["STARTING", "PAIRING"]);
// Lifecycle actions shown as buttons when the server has POST /v1/sessions/{id}/<action>.
const ACTIONS = {
  start: "Start",
  stop: "Stop",
  restart: "Restart",
  reconnect: "Force reconnect",
  logout: "Log out",
  "reset-breaker": "Reset circuit breaker",
  "reset-circuit": "Reset circuit breaker",
  reset_circuit: "Reset circuit breaker",
  reset: "Reset circuit breaker",
};

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

function actionBar(sessionId, f, navigate, refresh) {
  const bar = h("div", { class: "actions", id: "session-actions" });
  for (const [, action] of f.list("POST", /^\/v1\/sessions\/\{\}\/([a-z_-]+)$/)) {
    if (!(action in ACTIONS)) continue;
    bar.append(
      h(
        "button",
        {
          type: "button",
          dataset: { action },
          onclick: async (event) => {
            event.target.disabled = true;
            try {
              await post(`/v1/sessions/${enc(sessionId)}/${action}`);
              toast(`${ACTIONS[action]}: done`);
              refresh();
            } catch (err) {
              toast(`${ACTIONS[action]} failed: ${err.message}`, "error");
            } finally {
              event.target.disabled = false;
            }
          },
        },
        ACTIONS[action],
      ),
    );
  }
  if (f.has("DELETE", "/v1/sessions/{}")) {
    const button = h("button", { type: "button", class: "danger", dataset: { action: "delete" } }, "Delete");
    button.addEventListener("click", async () => {
      if (button.dataset.armed !== "1") {
        button.dataset.armed = "1";
        button.textContent = "Click again to delete";
        return;
      }
      try {
        await del(`/v1/sessions/${enc(sessionId)}`);
        toast(`Session ${sessionId} deleted`);
        navigate("#/sessions");
      } catch (err) {
        toast(`Delete failed: ${err.message}`, "error");
      }
    });
    bar.append(button);
  }
  return bar;
}

export function mount(view, { arg: sessionId, navigate }) {
  const title = h("h1", {}, h("a", { href: "#/sessions", class: "muted" }, "Sessions"), " / ", sessionId);
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

  let shownCode = null;
  let objectUrl = null;
  let alive = true;

  async function showQr() {
    const qr = await get(`/ui/api/sessions/${enc(sessionId)}/qr`);
    if (!alive) return;
    if (!qr.qr) {
      qrImage.hidden = true;
      return;
    }
    if (qr.qr === shownCode) return;
    const url = URL.createObjectURL(new Blob([qr.svg], { type: "image/svg+xml" }));
    qrImage.onload = () => {
      if (objectUrl && objectUrl !== url) URL.revokeObjectURL(objectUrl);
      objectUrl = url;
    };
    qrImage.src = url;
    qrImage.hidden = false;
    qrImage.dataset.code = qr.qr;
    shownCode = qr.qr;
    const seconds = Math.max(0, Math.round(qr.expires_at - Date.now() / 1000));
    qrCaption.textContent = `Open WhatsApp › Linked devices › Link a device, and scan. This code rotates in about ${seconds} s; the page follows.`;
  }

  async function tick() {
    let s;
    try {
      s = await get(`/v1/sessions/${enc(sessionId)}`);
      error.hidden = true;
    } catch (err) {
      error.textContent = err.status === 404 ? `There is no session ${sessionId}.` : `Cannot read the session: ${err.message}`;
      error.hidden = false;
      return;
    }
    if (!alive) return;
    replace(detailBox, details(s));
    pairing.dataset.state = s.state;
    pairing.classList.toggle("is-connected", s.state === "CONNECTED");
    sender.setConnected(s.state === "CONNECTED");
    if (s.state === "CONNECTED") {
      qrImage.hidden = true;
      shownCode = null;
      replace(qrCaption, h("span", { class: "connected", id: "connected" }, `Connected as ${phone(s.phone)}`));
    } else if (PAIRING_STATES.has(s.state)) {
      if (s.state === "STARTING") qrCaption.textContent = "Starting…";
      await showQr();
    } else {
      qrImage.hidden = true;
      shownCode = null;
      qrCaption.textContent = `The session is ${s.state}${s.reason ? `: ${s.reason}` : ""}.`;
    }
  }

  const stop = poll(tick, POLL_MS);
  features().then((f) => {
    if (alive) replace(actions, actionBar(sessionId, f, navigate, tick));
  });
  return () => {
    alive = false;
    stop();
    if (objectUrl) URL.revokeObjectURL(objectUrl);
  };
}
