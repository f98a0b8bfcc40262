// The contacts of one session (#/contacts/<id>, issue 16): the engine's contact store
// with names, the block list with block / unblock, and a lookup of one number (name,
// business flag, about text, profile picture URL). Everything comes from the documented
// API: GET /v1/sessions/{id}/contacts, GET …/blocklist, POST …/contacts/{chat}/block and
// …/unblock, GET …/contacts/{chat}.

import { enc, get, post } from "../api.js";
import { h, phone, poll, replace, toast } from "../dom.js";

const POLL_MS = 3000;

function label(contact) {
  return contact.phone ? phone(contact.phone) : contact.lid || "–";
}

export function mount(view, { arg }) {
  const sessionId = arg;
  const base = `/v1/sessions/${enc(sessionId)}`;
  const list = h("tbody", { id: "contact-rows" });
  const blockedList = h("ul", { id: "blocked-list" });
  const error = h("p", { class: "error", id: "contacts-error", hidden: true });
  const lookupInput = h("input", { id: "lookup-number", placeholder: "+15550001111 or <id>@lid", autocomplete: "off", required: true });
  const lookupForm = h("form", { class: "reply", id: "lookup-form" }, lookupInput, h("button", { type: "submit", class: "primary" }, "Look up"));
  const lookupResult = h("dl", { id: "lookup-result", hidden: true });
  let blocked = new Set();
  let stopped = false;

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
        " / contacts",
      ),
      error,
      h(
        "section",
        { class: "card" },
        h("h2", {}, "Contacts"),
        h(
          "table",
          {},
          h("thead", {}, h("tr", {}, h("th", {}, "Contact"), h("th", {}, "Name"), h("th", {}, "Push name"), h("th", {}, "Business"), h("th", {}, ""))),
          list,
        ),
      ),
      h("section", { class: "card" }, h("h2", {}, "Blocked"), blockedList),
      h("section", { class: "card" }, h("h2", {}, "Look up a contact"), lookupForm, lookupResult),
    ),
  );

  async function setBlocked(chat, block) {
    try {
      const answer = await post(`${base}/contacts/${enc(chat)}/${block ? "block" : "unblock"}`);
      blocked = new Set(answer.blocked);
      toast(`${block ? "Blocked" : "Unblocked"} ${chat}`);
      await refresh();
    } catch (err) {
      toast(`Not ${block ? "blocked" : "unblocked"}: ${err.message}`, "error");
    }
  }

  function blockButton(chat) {
    const isBlocked = blocked.has(chat);
    return h(
      "button",
      { type: "button", class: isBlocked ? "" : "danger", "data-block": chat, onclick: () => setBlocked(chat, !isBlocked) },
      isBlocked ? "Unblock" : "Block",
    );
  }

  async function refresh() {
    const [contacts, blocklist] = await Promise.all([get(`${base}/contacts`), get(`${base}/blocklist`)]);
    if (stopped) return;
    blocked = new Set(blocklist.blocked);
    replace(
      list,
      contacts.contacts.map((c) => {
        const chat = c.phone || c.lid;
        return h(
          "tr",
          { "data-contact": chat },
          h("td", {}, label(c)),
          h("td", {}, c.name || ""),
          h("td", {}, c.push_name || ""),
          h("td", {}, c.business_name || ""),
          h("td", {}, blockButton(chat)),
        );
      }),
    );
    if (!contacts.contacts.length) replace(list, h("tr", {}, h("td", { class: "muted" }, "No contacts yet")));
    replace(
      blockedList,
      blocklist.blocked.map((chat) => h("li", { "data-blocked": chat }, /^\d+$/.test(chat) ? phone(chat) : chat, " ", blockButton(chat))),
    );
    if (!blocklist.blocked.length) replace(blockedList, h("li", { class: "muted" }, "Nobody is blocked"));
  }

  lookupForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const c = await get(`${base}/contacts/${enc(lookupInput.value.trim())}`);
      const rows = [
        ["Phone", label(c)],
        ["LID", c.lid || "–"],
        ["Name", c.name || "–"],
        ["Push name", c.push_name || "–"],
        ["Business", c.business ? c.business_name || "yes" : "no"],
        ["About", c.about || "–"],
        ["Picture", c.picture_url ? h("a", { href: c.picture_url, target: "_blank", rel: "noopener noreferrer", id: "lookup-picture" }, "profile picture") : "–"],
      ];
      replace(lookupResult, rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", { "data-field": k.toLowerCase() }, v)]));
      lookupResult.hidden = false;
    } catch (err) {
      lookupResult.hidden = true;
      toast(`Not found: ${err.message}`, "error");
    }
  });

  const stopPolling = poll(async () => {
    try {
      await refresh();
      error.hidden = true;
    } catch (err) {
      error.textContent = `Cannot read the contacts: ${err.message}`;
      error.hidden = false;
      throw err;
    }
  }, POLL_MS);

  return () => {
    stopped = true;
    stopPolling();
  };
}
