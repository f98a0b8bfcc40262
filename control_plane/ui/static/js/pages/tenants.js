// Tenants (admin): list and create tenants; a tenant's API keys, created (the key is shown
// once) and revoked. Every call is the public /v1/tenants API with the admin key; none
// sends X-Tenant-Id, so the page works whatever tenant the picker acts for.

import { enc, get, listOf, post, del, setTenant } from "../api.js";
import { ago, confirmAction, h, poll, replace, toast } from "../dom.js";

const POLL_MS = 5000;
const NO_TENANT = { tenant: null };

export const TENANTS_CHANGED = "zapfleet:tenants-changed";

function createTenantForm(onCreated) {
  const id = h("input", {
    id: "new-tenant-id",
    name: "tenant_id",
    required: true,
    placeholder: "e.g. acme",
    pattern: "[a-z0-9][a-z0-9_\\-]{0,62}",
    title: "lower-case letters, digits, _ and -, up to 63, starting with a letter or digit",
    autocomplete: "off",
  });
  const name = h("input", { id: "new-tenant-name", name: "name", placeholder: "Acme Inc. (optional)", autocomplete: "off" });
  const error = h("p", { class: "error", id: "new-tenant-error", hidden: true });
  const submit = h("button", { type: "submit", class: "primary", id: "create-tenant" }, "Create tenant");
  const form = h(
    "form",
    { class: "card", id: "create-tenant-form" },
    h("h2", {}, "New tenant"),
    h("div", { class: "grid" }, h("label", {}, "Tenant id", id), h("label", {}, "Name", name)),
    error,
    submit,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { tenant_id: id.value.trim() };
    if (name.value.trim()) body.name = name.value.trim();
    submit.disabled = true;
    error.hidden = true;
    try {
      const created = await post("/v1/tenants", body, NO_TENANT);
      toast(`Tenant ${created.tenant_id} created`);
      id.value = "";
      name.value = "";
      onCreated(created.tenant_id);
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

function keyStatus(k) {
  if (k.revoked_at) return h("span", { class: "badge state-failed" }, "REVOKED");
  if (k.expires_at && k.expires_at * 1000 <= Date.now()) return h("span", { class: "badge state-failed" }, "EXPIRED");
  if (k.expires_at) return h("span", { class: "badge state-reconnecting" }, "EXPIRING");
  return h("span", { class: "badge state-connected" }, "ACTIVE");
}

// The keys of one tenant: list, create (the key in clear shown once), revoke.
function keysCard(tenantId, onChanged) {
  const rows = h("tbody", { id: "keys-rows" });
  const status = h("p", { class: "muted", id: "keys-status" }, "Loading…");
  const label = h("input", { id: "new-key-label", name: "label", placeholder: "e.g. billing service (optional)", autocomplete: "off" });
  const submit = h("button", { type: "submit", class: "primary", id: "create-key" }, "Create key");
  const fresh = h("div", { id: "new-key-box", hidden: true });
  const form = h("form", { id: "create-key-form" }, h("div", { class: "grid" }, h("label", {}, "Label", label)), submit);

  let refresh = async () => {};
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    try {
      const body = label.value.trim() ? { label: label.value.trim() } : {};
      const created = await post(`/v1/tenants/${enc(tenantId)}/keys`, body, NO_TENANT);
      label.value = "";
      replace(
        fresh,
        h("p", {}, `New key ${created.key_id} for tenant ${tenantId}. Copy it now: it is shown only this once and stored only as a hash.`),
        h("code", { class: "secret", id: "new-key" }, created.key),
      );
      fresh.hidden = false;
      await refresh();
      onChanged();
    } catch (err) {
      toast(`Key not created: ${err.message}`, "error");
    } finally {
      submit.disabled = false;
    }
  });

  const revokeButton = (k) => {
    const button = h("button", { type: "button", class: "danger", dataset: { action: "revoke", key: k.key_id } }, "Revoke");
    button.addEventListener("click", async () => {
      const ok = await confirmAction({
        title: `Revoke key ${k.key_id}?`,
        text: `Every client of tenant ${tenantId} that uses this key${k.label ? ` (${k.label})` : ""} gets 401 from now on. This cannot be undone; create a new key to replace it.`,
        confirm: "Revoke key",
      });
      if (!ok) return;
      button.disabled = true;
      try {
        await del(`/v1/tenants/${enc(tenantId)}/keys/${enc(k.key_id)}`, NO_TENANT);
        toast(`Key ${k.key_id} revoked`);
        await refresh();
        onChanged();
      } catch (err) {
        toast(`Revoke failed: ${err.message}`, "error");
        button.disabled = false;
      }
    });
    return button;
  };

  refresh = async () => {
    const keys = listOf(await get(`/v1/tenants/${enc(tenantId)}/keys`, NO_TENANT), "keys");
    keys.sort((a, b) => b.created_at - a.created_at);
    replace(
      rows,
      keys.map((k) =>
        h(
          "tr",
          { dataset: { key: k.key_id } },
          h("td", { class: "mono" }, k.key_id),
          h("td", { class: "id" }, k.label || "–"),
          h("td", {}, keyStatus(k)),
          h("td", { class: "nowrap" }, ago(k.created_at)),
          h("td", { class: "row-actions" }, k.revoked_at ? null : revokeButton(k)),
        ),
      ),
    );
    status.textContent = keys.length ? `${keys.length} key(s)` : "This tenant has no key yet.";
  };

  const card = h(
    "section",
    { class: "card", id: "tenant-keys", dataset: { tenant: tenantId } },
    h("h2", {}, `API keys of ${tenantId}`),
    status,
    h(
      "div",
      { class: "scroll-x" },
      h("table", { class: "table" }, h("thead", {}, h("tr", {}, ["Key id", "Label", "Status", "Created", ""].map((t) => h("th", {}, t)))), rows),
    ),
    h("h3", {}, "New key"),
    form,
    fresh,
  );
  return { card, refresh: () => refresh() };
}

export function mount(view, { arg, me, navigate }) {
  if (!me.is_admin) {
    replace(view, h("section", { class: "card notice" }, h("p", {}, "Tenants are managed with the admin key only.")));
    return null;
  }
  const selected = arg || null;
  const rows = h("tbody", { id: "tenants-rows" });
  const status = h("p", { class: "muted", id: "tenants-status" }, "Loading…");
  const changed = () => window.dispatchEvent(new CustomEvent(TENANTS_CHANGED));
  let refresh = async () => {};
  const listCard = h(
    "section",
    { class: "card" },
    h("h2", {}, "Tenants"),
    status,
    h(
      "div",
      { class: "scroll-x" },
      h(
        "table",
        { class: "table", id: "tenants-table" },
        h("thead", {}, h("tr", {}, ["Tenant", "Name", "Sessions", "Keys", "Created", ""].map((t) => h("th", {}, t)))),
        rows,
      ),
    ),
  );
  const keys = selected ? keysCard(selected, () => refresh()) : null;
  const form = createTenantForm((tenantId) => {
    changed();
    navigate(`#/tenants/${enc(tenantId)}`);
  });
  replace(view, h("div", { class: "stack" }, listCard, keys ? keys.card : null, form));

  refresh = async () => {
    const tenants = listOf(await get("/v1/tenants", NO_TENANT), "tenants");
    replace(
      rows,
      tenants.map((t) =>
        h(
          "tr",
          { dataset: { tenant: t.tenant_id }, class: t.tenant_id === selected ? "selected" : null },
          h("td", { class: "id" }, h("a", { href: `#/tenants/${enc(t.tenant_id)}` }, t.tenant_id)),
          h("td", { class: "id" }, t.name, t.disabled ? " (disabled)" : ""),
          h("td", { class: "num" }, String(t.sessions ?? 0)),
          h("td", { class: "num" }, String(t.keys ?? 0)),
          h("td", { class: "nowrap" }, ago(t.created_at)),
          h(
            "td",
            { class: "row-actions" },
            h("a", { href: `#/tenants/${enc(t.tenant_id)}`, dataset: { action: "keys" } }, "Keys"),
            " ",
            h(
              "button",
              {
                type: "button",
                dataset: { action: "act-as" },
                title: "Show and manage this tenant's sessions and webhooks",
                onclick: () => {
                  setTenant(t.tenant_id);
                  changed();
                  navigate("#/sessions");
                },
              },
              "Open sessions",
            ),
          ),
        ),
      ),
    );
    status.textContent = tenants.length
      ? `${tenants.length} tenant(s), besides the built-in default tenant of the admin key`
      : "No tenant yet: the admin key acts for the built-in default tenant.";
    status.classList.remove("error");
  };
  const guarded = async () => {
    try {
      await refresh();
    } catch (err) {
      status.textContent = `Cannot list tenants: ${err.message}`;
      status.classList.add("error");
    }
  };
  const stop = poll(guarded, POLL_MS);
  if (keys) {
    keys.refresh().catch((err) => {
      replace(keys.card, h("h2", {}, `API keys of ${selected}`), h("p", { class: "error" }, `Cannot read the keys: ${err.message}`));
    });
  }
  return () => {
    stop();
  };
}
