// The groups of one session (#/groups/<id>, issue 16): every group the account is in
// with its role and settings, one group's participants with their roles and (for an
// admin) its invite link, leaving a group, and creating one — with the result WhatsApp
// gave for each participant. Everything comes from the documented API: GET/POST
// /v1/sessions/{id}/groups, GET …/groups/{group}, GET …/groups/{group}/invite,
// POST …/groups/{group}/leave.

import { enc, get, post } from "../api.js";
import { confirmAction, h, phone, poll, replace, toast } from "../dom.js";

const POLL_MS = 3000;

function who(member) {
  return member.phone ? phone(member.phone) : member.lid || member.id;
}

function settingsText(s) {
  const parts = [];
  if (s.announce) parts.push("admins only send");
  if (s.locked) parts.push("info locked");
  if (s.approval) parts.push("approval to join");
  if (s.ephemeral_s) parts.push(`disappearing ${Math.round(s.ephemeral_s / 86400)} d`);
  return parts.join(", ") || "–";
}

export function mount(view, { arg }) {
  const sessionId = arg;
  const base = `/v1/sessions/${enc(sessionId)}`;
  const rows = h("tbody", { id: "group-rows" });
  const error = h("p", { class: "error", id: "groups-error", hidden: true });
  const detail = h("section", { class: "card", id: "group-detail", hidden: true });
  const subject = h("input", { id: "new-group-subject", placeholder: "Subject", maxlength: 100, required: true, autocomplete: "off" });
  const members = h("input", { id: "new-group-participants", placeholder: "+15550001111, +15550002222", autocomplete: "off" });
  const createForm = h("form", { class: "reply", id: "create-group-form" }, subject, members, h("button", { type: "submit", class: "primary" }, "Create"));
  const results = h("ul", { id: "create-results", hidden: true });
  let me = null; // the session's phone: which participant is this account
  let open = null; // the group shown in detail
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
        " / groups",
      ),
      error,
      h(
        "section",
        { class: "card" },
        h("h2", {}, "Groups"),
        h(
          "table",
          {},
          h("thead", {}, h("tr", {}, h("th", {}, "Subject"), h("th", {}, "Participants"), h("th", {}, "Role"), h("th", {}, "Settings"), h("th", {}, ""))),
          rows,
        ),
      ),
      detail,
      h("section", { class: "card" }, h("h2", {}, "Create a group"), createForm, results),
    ),
  );

  function roleOf(group) {
    const mine = group.participants.find((m) => m.phone === me || m.id === me);
    return mine ? mine.role : "–";
  }

  async function showDetail(groupId) {
    open = groupId;
    let group;
    try {
      group = await get(`${base}/groups/${enc(groupId)}`);
    } catch (err) {
      detail.hidden = true;
      toast(`Cannot read the group: ${err.message}`, "error");
      return;
    }
    if (stopped || open !== groupId) return;
    const admin = roleOf(group) !== "member" && roleOf(group) !== "–";
    const link = h("p", { id: "invite-link", class: "muted" }, group.invite_link || "");
    const inviteButton = h(
      "button",
      {
        type: "button",
        id: "show-invite",
        hidden: !admin,
        onclick: async () => {
          try {
            replace(link, (await get(`${base}/groups/${enc(groupId)}/invite`)).link);
          } catch (err) {
            toast(`No invite link: ${err.message}`, "error");
          }
        },
      },
      "Invite link",
    );
    const leaveButton = h(
      "button",
      {
        type: "button",
        class: "danger",
        id: "leave-group",
        onclick: async () => {
          const sure = await confirmAction({
            title: `Leave ${group.subject}?`,
            text: "The account leaves the group; an admin must add it again.",
            confirm: "Leave",
          });
          if (!sure) return;
          try {
            await post(`${base}/groups/${enc(groupId)}/leave`);
            toast(`Left ${group.subject}`);
            detail.hidden = true;
            open = null;
            await refresh();
          } catch (err) {
            toast(`Not left: ${err.message}`, "error");
          }
        },
      },
      "Leave",
    );
    replace(
      detail,
      h("h2", { id: "group-subject" }, group.subject),
      h("p", { class: "muted" }, group.id, group.description ? ` — ${group.description}` : ""),
      h(
        "table",
        {},
        h("thead", {}, h("tr", {}, h("th", {}, "Participant"), h("th", {}, "Role"))),
        h(
          "tbody",
          { id: "member-rows" },
          group.participants.map((m) => h("tr", { "data-member": m.id }, h("td", {}, who(m)), h("td", { "data-role": m.role }, m.role))),
        ),
      ),
      h("p", {}, inviteButton, " ", leaveButton),
      link,
    );
    detail.hidden = false;
  }

  async function refresh() {
    if (me === null) me = (await get(base)).phone || "";
    const answer = await get(`${base}/groups`);
    if (stopped) return;
    replace(
      rows,
      answer.groups.map((g) =>
        h(
          "tr",
          { "data-group": g.id },
          h("td", {}, g.subject),
          h("td", {}, String(g.participants.length)),
          h("td", { "data-role": roleOf(g) }, roleOf(g)),
          h("td", {}, settingsText(g.settings)),
          h("td", {}, h("button", { type: "button", "data-open": g.id, onclick: () => showDetail(g.id) }, "Open")),
        ),
      ),
    );
    if (!answer.groups.length) replace(rows, h("tr", {}, h("td", { class: "muted" }, "No groups yet")));
  }

  createForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const participants = members.value.split(",").map((p) => p.trim()).filter(Boolean);
    try {
      const created = await post(`${base}/groups`, { subject: subject.value.trim(), participants });
      replace(
        results,
        created.results.map((r) => h("li", { "data-participant": r.participant, "data-status": r.status }, `${r.participant}: ${r.status.replaceAll("_", " ")}`)),
      );
      results.hidden = !created.results.length;
      toast(`Created ${created.group.subject}`);
      subject.value = "";
      members.value = "";
      await refresh();
      await showDetail(created.group.id);
    } catch (err) {
      toast(`Not created: ${err.message}`, "error");
    }
  });

  const stopPolling = poll(async () => {
    try {
      await refresh();
      error.hidden = true;
    } catch (err) {
      error.textContent = `Cannot read the groups: ${err.message}`;
      error.hidden = false;
      throw err;
    }
  }, POLL_MS);

  return () => {
    stopped = true;
    stopPolling();
  };
}
