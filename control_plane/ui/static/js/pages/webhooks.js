// Webhooks: the configured destinations, and the dead letters (deliveries that exhausted
// their retries) with redrive, one or all. The endpoints are looked up in the server's
// OpenAPI document, so the page follows the API as it grows.

import { del, enc, features, get, getTenant, listOf, post, request } from "../api.js";
import { ago, h, poll, replace, toast } from "../dom.js";

const POLL_MS = 5000;
const isDlq = (p) => /dead|dlq/.test(p);

function fill(template, id) {
  return template.replace("{}", enc(id));
}

function webhookConfigCard(f, me) {
  const path = f.find("GET", (p) => /^\/v1\/webhooks?$/.test(p)) || f.find("GET", (p) => /webhook/.test(p) && !p.includes("{}") && !isDlq(p));
  const body = h("div", { id: "webhook-config" }, h("p", { class: "muted" }, "Loading…"));
  const tenant = me && me.is_admin ? getTenant() || "default" : null;
  const heading = h("h2", {}, "Webhooks", tenant ? h("span", { class: "muted", id: "webhooks-tenant" }, ` · tenant ${tenant}`) : null);
  const card = h("section", { class: "card" }, heading, body);
  if (!path) {
    replace(body, h("p", { class: "muted" }, "This server has no webhook configuration API; set ZAPFLEET_WEBHOOK_URL or a per-session webhook URL."));
    return { card, refresh: async () => {} };
  }
  const form = tenantConfigForm(f, () => refresh());
  if (form) card.append(form);
  const refresh = async () => {
    const config = await get(path);
    const hooks = listOf(config, "webhooks", "destinations");
    if (hooks.length) {
      replace(
        body,
        h(
          "table",
          { class: "table" },
          h("thead", {}, h("tr", {}, ["Scope", "URL", "Events", "Secret"].map((t) => h("th", {}, t)))),
          h(
            "tbody",
            {},
            hooks.map((w) =>
              h(
                "tr",
                {},
                h("td", {}, w.scope || w.session_id || w.tenant || "–"),
                h("td", { class: "mono" }, w.url || "–"),
                h("td", {}, (w.events || w.event_types || []).join(", ") || "all"),
                h("td", {}, w.secret || w.has_secret ? "set" : "–"),
              ),
            ),
          ),
        ),
      );
    } else if (config && Array.isArray(config.webhooks)) {
      replace(body, h("p", { class: "muted" }, "No webhook is configured for your events."));
    } else {
      replace(body, h("pre", { class: "mono" }, JSON.stringify(config, null, 2)));
    }
  };
  return { card, refresh };
}

// The caller's own (tenant) webhook, when the server lets it be set: PUT/DELETE <config>.
function tenantConfigForm(f, onSaved) {
  const path = f.find("PUT", (p) => /^\/v1\/webhooks?\/config$/.test(p));
  if (!path) return null;
  const urls = h("input", { id: "webhook-urls", name: "urls", required: true, placeholder: "https://example.com/hook, https://…", autocomplete: "off" });
  const events = h("input", { id: "webhook-events", name: "events", placeholder: "all, or e.g. message.received, session.status", autocomplete: "off" });
  const secret = h("input", { id: "webhook-secret", name: "secret", type: "password", placeholder: "unchanged if empty", autocomplete: "new-password" });
  const result = h("p", { class: "muted", id: "webhook-form-result" });
  const split = (text) => text.split(",").map((t) => t.trim()).filter(Boolean);
  const form = h(
    "form",
    { id: "webhook-form" },
    h("h3", {}, "Webhook of this tenant"),
    h("div", { class: "grid" }, h("label", {}, "URLs (comma-separated)", urls), h("label", {}, "Events", events), h("label", {}, "Signing secret", secret)),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary", id: "webhook-save" }, "Save")),
    result,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { urls: split(urls.value) };
    if (split(events.value).length) body.events = split(events.value);
    if (secret.value) body.secret = secret.value;
    try {
      await request("PUT", path, body);
      secret.value = "";
      result.textContent = "Saved: it applies at once, no restart and no re-pairing.";
      result.classList.remove("error");
      onSaved();
    } catch (err) {
      result.textContent = `Not saved: ${err.message}`;
      result.classList.add("error");
    }
  });
  return form;
}

function deadLetterCard(f, me) {
  const listPath = f.find("GET", (p) => isDlq(p) && !p.includes("{}"));
  const body = h("div", { id: "dead-letters" }, h("p", { class: "muted" }, "Loading…"));
  const head = h("div", { class: "card-head" }, h("h2", {}, "Dead letters"));
  const card = h("section", { class: "card" }, head, body);
  if (!listPath) {
    replace(body, h("p", { class: "muted" }, "This server has no dead-letter API."));
    return { card, refresh: async () => {} };
  }
  const redriveOne = f.find("POST", (p) => isDlq(p) && p.includes("{}") && /redrive|retry/.test(p));
  const redriveAll = f.find("POST", (p) => isDlq(p) && !p.includes("{}") && /redrive|retry/.test(p));
  const purge = f.has("DELETE", listPath) ? listPath : null;
  // the admin key sees the picked tenant's dead letters, or every tenant's when asked
  let scope = "";
  let refresh = async () => {};
  if (me && me.is_admin) {
    const every = h("input", { type: "checkbox", id: "dlq-all-tenants" });
    every.addEventListener("change", () => {
      scope = every.checked ? "?all_tenants=true" : "";
      refresh().catch((err) => toast(`Cannot read dead letters: ${err.message}`, "error"));
    });
    head.append(h("label", { class: "check" }, every, "every tenant"));
  }
  const act = async (label, call) => {
    try {
      await call();
      toast(`${label}: done`);
      await refresh();
    } catch (err) {
      toast(`${label} failed: ${err.message}`, "error");
    }
  };
  const tools = h("div", { class: "actions" });
  if (redriveAll) tools.append(h("button", { type: "button", id: "redrive-all", onclick: () => act("Redrive all", () => post(redriveAll + scope)) }, "Redrive all"));
  if (purge) {
    const button = h("button", { type: "button", class: "danger", id: "purge-dlq" }, "Purge");
    button.addEventListener("click", () => {
      if (button.dataset.armed !== "1") {
        button.dataset.armed = "1";
        button.textContent = "Click again to purge";
        return;
      }
      button.dataset.armed = "";
      button.textContent = "Purge";
      act("Purge", () => del(purge + scope));
    });
    tools.append(button);
  }
  head.append(tools);
  refresh = async () => {
    const letters = listOf(await get(listPath + scope), "dead_letters", "letters", "entries");
    if (!letters.length) {
      replace(body, h("p", { class: "muted" }, "No dead letters: every delivery succeeded or is still being retried."));
      return;
    }
    replace(
      body,
      h(
        "table",
        { class: "table" },
        h("thead", {}, h("tr", {}, ["Event", "Type", "Session", "Destination", "Attempts", "Last error", "Failed", ""].map((t) => h("th", {}, t)))),
        h(
          "tbody",
          {},
          letters.map((d) => {
            const event = d.event || {};
            const id = d.id ?? d.seq ?? d.sequence ?? event.id;
            return h(
              "tr",
              { dataset: { letter: String(id) } },
              h("td", { class: "mono" }, String(event.id || d.event_id || id)),
              h("td", {}, event.type || d.type || "–"),
              h("td", {}, event.session_id || d.session_id || "–"),
              h("td", { class: "mono" }, d.url || d.destination || "–"),
              h("td", { class: "num" }, String(d.attempts ?? "–")),
              h("td", { class: "wrap" }, d.last_error || d.error || "–"),
              h("td", {}, ago(d.failed_at || d.ts)),
              h(
                "td",
                {},
                redriveOne
                  ? h("button", { type: "button", dataset: { action: "redrive" }, onclick: () => act("Redrive", () => post(fill(redriveOne, id) + scope)) }, "Redrive")
                  : null,
              ),
            );
          }),
        ),
      ),
    );
  };
  return { card, refresh: () => refresh() };
}

export function mount(view, { me }) {
  const holder = h("div", { class: "stack" }, h("p", { class: "muted" }, "Loading…"));
  replace(view, holder);
  let stop = () => {};
  let alive = true;
  features().then((f) => {
    if (!alive) return;
    const config = webhookConfigCard(f, me);
    const dlq = deadLetterCard(f, me);
    replace(holder, config.card, dlq.card);
    config.refresh().catch((err) => toast(`Cannot read webhooks: ${err.message}`, "error"));
    stop = poll(() => dlq.refresh(), POLL_MS);
  });
  return () => {
    alive = false;
    stop();
  };
}
