// The console's shell: sign-in gate, navigation, the admin's tenant picker and a hash
// router (#/sessions, #/sessions/<id>, #/chats/<id>, #/contacts/<id>, #/nodes, #/webhooks, #/tenants, #/tenants/<id>).
// Each page is a module whose mount(view, ctx) returns a function that stops its polling
// when the page is left.

import { DEFAULT_TENANT, clearKey, get, getKey, getTenant, listOf, setTenant } from "./api.js";
import { h, replace, toast } from "./dom.js";
import * as contacts from "./pages/contacts.js"; // issue 16
import * as conversation from "./pages/conversation.js";
import * as groups from "./pages/groups.js"; // groups (issue 16)
import * as nodes from "./pages/nodes.js";
import * as session from "./pages/session.js";
import * as sessions from "./pages/sessions.js";
import * as signin from "./pages/signin.js";
import * as tenants from "./pages/tenants.js";
import * as webhooks from "./pages/webhooks.js";

const view = document.getElementById("view");
let unmount = null;
let me = null;

function route() {
  const hash = decodeURIComponent(location.hash.replace(/^#\/?/, ""));
  const [page, ...rest] = hash.split("/");
  if (page === "sessions" && rest.length && rest[0]) return { page: session, name: "sessions", arg: rest.join("/") };
  if (page === "chats" && rest.length && rest[0]) return { page: conversation, name: "sessions", arg: rest.join("/") };
  if (page === "contacts" && rest.length && rest[0]) return { page: contacts, name: "sessions", arg: rest.join("/") }; // issue 16
  if (page === "groups" && rest.length && rest[0]) return { page: groups, name: "sessions", arg: rest.join("/") }; // groups (issue 16)
  if (page === "nodes") return { page: nodes, name: "nodes" };
  if (page === "webhooks") return { page: webhooks, name: "webhooks" };
  if (page === "tenants") return { page: tenants, name: "tenants", arg: rest.join("/") || null };
  return { page: sessions, name: "sessions" };
}

function showShell(signedIn) {
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("who").hidden = !signedIn;
  if (signedIn && me) {
    document.getElementById("who-label").textContent = me.is_admin
      ? "admin"
      : `tenant ${me.tenant}`;
  }
  document.querySelectorAll("#nav a").forEach((a) => {
    a.hidden = (a.dataset.page === "nodes" || "admin" in a.dataset) && me && !me.is_admin;
  });
  document.getElementById("tenant-pick").hidden = !(signedIn && me && me.is_admin);
}

// The admin's tenant picker: the built-in default tenant and every tenant of
// GET /v1/tenants. The choice is sent as X-Tenant-Id by every call of the pages.
async function fillTenantPicker() {
  if (!me || !me.is_admin) return;
  const picker = document.getElementById("tenant-picker");
  let ids;
  try {
    ids = listOf(await get("/v1/tenants", { tenant: null }), "tenants").map((t) => t.tenant_id);
  } catch (err) {
    toast(`Cannot list tenants: ${err.message}`, "error");
    return;
  }
  const all = [DEFAULT_TENANT, ...ids.filter((id) => id !== DEFAULT_TENANT)];
  const acting = getTenant() || DEFAULT_TENANT;
  if (!all.includes(acting)) {
    // the tenant was deleted meanwhile: back to the default one
    setTenant(null);
    toast(`Tenant ${acting} no longer exists; showing the default tenant`, "error");
    if (route().name === "sessions" && route().arg) navigate("#/sessions");
    else render();
  }
  replace(picker, all.map((id) => h("option", { value: id }, id)));
  picker.value = getTenant() || DEFAULT_TENANT;
}

function pickTenant(event) {
  const tenant = event.target.value;
  setTenant(tenant === DEFAULT_TENANT ? null : tenant);
  // a session page belongs to the tenant it was opened for
  if (route().arg && route().name === "sessions") navigate("#/sessions");
  else render();
}

async function render() {
  if (unmount) {
    unmount();
    unmount = null;
  }
  if (!getKey() || !me) {
    showShell(false);
    unmount = signin.mount(view, { onSignedIn });
    return;
  }
  showShell(true);
  const { page, name, arg } = route();
  document.querySelectorAll("#nav a").forEach((a) => {
    a.classList.toggle("active", a.dataset.page === name);
  });
  replace(view);
  unmount = page.mount(view, { arg, me, navigate }) || null;
}

function navigate(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

function onSignedIn(who) {
  me = who;
  render();
  fillTenantPicker();
}

function signOut() {
  clearKey();
  me = null;
  render();
}

async function start() {
  document.getElementById("sign-out").addEventListener("click", signOut);
  document.getElementById("tenant-picker").addEventListener("change", pickTenant);
  window.addEventListener(tenants.TENANTS_CHANGED, fillTenantPicker);
  window.addEventListener("zapfleet:tenant-gone", fillTenantPicker);
  window.addEventListener("hashchange", render);
  window.addEventListener("zapfleet:unauthorized", () => {
    if (me) signOut();
  });
  if (getKey()) {
    try {
      me = await get("/ui/api/me", { tenant: null });
    } catch (err) {
      clearKey();
    }
  }
  render();
  fillTenantPicker();
}

start().catch((err) => {
  replace(view, h("p", { class: "error" }, `The console failed to start: ${err.message}`));
});
