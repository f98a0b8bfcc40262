// The conversations of one session (#/chats/<id>): its chats (from the message history,
// newest first), the messages of the chosen chat with delivery ticks (queued, sent,
// server, delivered, read, failed) and previews of received images the session stored.
// Everything comes from the documented API: GET /v1/sessions/{id}/messages (?chat= is
// read live from the agent, never from the 60 s cache) and GET …/media/{media_id}.
// Each message offers what WhatsApp allows on it, through the ordinary send
// (POST …/messages): reply (quote) and react 👍 on any message; edit and delete for
// everyone on texts this session sent (the API refuses them past WhatsApp's windows and
// the page shows why).

import { enc, get, post, request } from "../api.js";
import { ago, confirmAction, h, phone, poll, replace, toast } from "../dom.js";

const POLL_MS = 1500;
// the tick a status shows, and what it means (title)
export const TICKS = {
  queued: ["…", "queued: accepted, waiting for its turn (pacing) or for the connection"],
  sent: ["✓", "sent: handed to WhatsApp"],
  server: ["✓", "on WhatsApp's server"],
  delivered: ["✓✓", "delivered to the phone"],
  read: ["✓✓", "read"],
  failed: ["✗", "failed"],
};

function chatLabel(peer) {
  return /^\d+$/.test(peer) ? phone(peer) : peer;
}

function summary(m) {
  if (m.text) return m.text;
  return `[${m.type}]`;
}

export function mount(view, { arg }) {
  const sessionId = arg;
  const base = `/v1/sessions/${enc(sessionId)}`;
  const chats = h("ul", { class: "chat-list", id: "chat-list" });
  const messages = h("ol", { class: "messages", id: "messages" });
  const heading = h("h2", { id: "chat-title" }, "Pick a chat");
  const error = h("p", { class: "error", id: "conversation-error", hidden: true });
  const text = h("input", { id: "reply-text", placeholder: "Write a message", autocomplete: "off", required: true });
  const send = h("button", { type: "submit", class: "primary", id: "reply-send", disabled: true }, "Send");
  const context = h("p", { class: "small muted", id: "reply-context", hidden: true });
  const form = h("form", { class: "reply", id: "reply-form" }, context, text, send);
  const previews = new Map(); // media id -> object URL (revoked on unmount)
  let chosen = null;
  let stopped = false;
  // what the next submit does: a new text (null), a reply to a message, or an edit of one
  let mode = null; // { kind: "reply" | "edit", message }

  function setMode(next) {
    mode = next;
    if (!mode) {
      context.hidden = true;
      replace(context);
      send.textContent = "Send";
      return;
    }
    const cancel = h("button", { type: "button", class: "link", id: "reply-cancel", onclick: () => setMode(null) }, "cancel");
    const label = mode.kind === "edit" ? "Editing" : "Replying to";
    replace(context, `${label}: “${summary(mode.message)}” `, cancel);
    context.hidden = false;
    send.textContent = mode.kind === "edit" ? "Save" : "Send";
    if (mode.kind === "edit") text.value = mode.message.text || "";
    text.focus();
  }

  async function act(what, body) {
    try {
      await post(`${base}/messages`, { to: chosen, ...body });
      await refreshThread();
    } catch (err) {
      toast(`${what} refused: ${err.message}`, "error");
    }
  }

  function actions(m) {
    const out = m.direction === "out";
    const id = m.message_id;
    const button = (label, cls, onclick) => h("button", { type: "button", class: `link small ${cls}`, onclick }, label);
    const list = [
      button("Reply", "act-reply", () => setMode({ kind: "reply", message: m })),
      button("👍", "act-react", () => act("Reaction", { type: "reaction", message_id: id, emoji: "👍" })),
    ];
    if (out && m.type === "text" && m.status !== "failed") {
      list.push(button("Edit", "act-edit", () => setMode({ kind: "edit", message: m })));
      list.push(
        button("Delete", "act-delete", async () => {
          const sure = await confirmAction({
            title: "Delete for everyone?",
            text: "WhatsApp removes the message from the chat on every phone (within about two days of sending).",
            confirm: "Delete",
          });
          if (sure) await act("Delete", { type: "revoke", message_id: id });
        }),
      );
    }
    return h("span", { class: "actions small" }, list);
  }

  replace(
    view,
    h(
      "div",
      { class: "stack" },
      h(
        "h1",
        {},
        h("a", { href: "#/sessions", class: "muted" }, "Sessions"),
        " / ",
        h("a", { href: `#/sessions/${enc(sessionId)}`, class: "muted" }, sessionId),
        " / conversations",
      ),
      error,
      h(
        "div",
        { class: "conversation" },
        h("section", { class: "card chats" }, h("h2", {}, "Chats"), chats),
        h("section", { class: "card thread" }, heading, messages, form),
      ),
    ),
  );

  function choose(peer) {
    if (peer !== chosen) setMode(null);
    chosen = peer;
    send.disabled = false;
    heading.textContent = chatLabel(peer);
    chats.querySelectorAll("li").forEach((li) => li.classList.toggle("active", li.dataset.chat === peer));
    refreshThread();
  }

  async function preview(m) {
    const media = m.media;
    if (!media || !media.id || !String(media.mimetype || "").startsWith("image/")) return null;
    let url = previews.get(media.id);
    if (!url) {
      try {
        const blob = await request("GET", `${base}/media/${enc(media.id)}`, undefined, { accept: media.mimetype });
        if (stopped) return null;
        url = URL.createObjectURL(blob);
        previews.set(media.id, url);
      } catch (err) {
        return h("span", { class: "muted small" }, `[image not available: ${err.message}]`);
      }
    }
    return h("img", { class: "preview", src: url, alt: media.filename || "received image", "data-media-id": media.id });
  }

  async function bubble(m) {
    const [tick, meaning] = TICKS[m.status] || ["", m.status];
    const out = m.direction === "out";
    return h(
      "li",
      { class: `bubble ${out ? "out" : "in"}`, "data-message-id": m.message_id, "data-status": m.status },
      await preview(m),
      h("span", { class: "body" }, summary(m)),
      h(
        "span",
        { class: "meta small muted" },
        ago(m.timestamp),
        out ? h("span", { class: `tick tick-${m.status}`, title: m.error ? `${meaning}: ${m.error}` : meaning }, ` ${tick}`) : null,
      ),
      actions(m),
    );
  }

  async function refreshChats() {
    const page = await get(`${base}/messages?limit=1000`);
    const latest = new Map();
    for (const m of page.messages) if (!latest.has(m.peer)) latest.set(m.peer, m);
    replace(
      chats,
      [...latest.values()].map((m) =>
        h(
          "li",
          { "data-chat": m.peer, class: m.peer === chosen ? "active" : "", onclick: () => choose(m.peer) },
          h("strong", {}, chatLabel(m.peer)),
          h("span", { class: "muted small" }, ` ${summary(m)}`),
        ),
      ),
    );
    if (!latest.size) replace(chats, h("li", { class: "muted" }, "No messages yet"));
  }

  async function refreshThread() {
    if (!chosen) return;
    const peer = chosen;
    const page = await get(`${base}/messages?chat=${enc(peer)}&limit=100`);
    if (peer !== chosen || stopped) return;
    const items = await Promise.all(page.messages.slice().reverse().map(bubble));
    replace(messages, items);
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!chosen) return;
    send.disabled = true;
    const body =
      mode && mode.kind === "edit"
        ? { type: "edit", to: chosen, message_id: mode.message.message_id, text: text.value }
        : { type: "text", to: chosen, text: text.value, ...(mode ? { reply_to: mode.message.message_id } : {}) };
    try {
      await post(`${base}/messages`, body);
      text.value = "";
      setMode(null);
      await refreshThread();
    } catch (err) {
      toast(`${body.type === "edit" ? "Not edited" : "Not sent"}: ${err.message}`, "error");
    } finally {
      send.disabled = false;
    }
  });

  const stopPolling = poll(async () => {
    try {
      await refreshChats();
      await refreshThread();
      error.hidden = true;
    } catch (err) {
      error.textContent = `Cannot read the conversations: ${err.message}`;
      error.hidden = false;
      throw err;
    }
  }, POLL_MS);

  return () => {
    stopped = true;
    stopPolling();
    for (const url of previews.values()) URL.revokeObjectURL(url);
  };
}
