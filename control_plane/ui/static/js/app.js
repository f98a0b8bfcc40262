// The console's shell: sign-in gate, navigation and a hash router (#/sessions,
// #/sessions/<id>, #/nodes, #/webhooks). Each page is a module whose mount(view, ctx)
// returns a function that stops its polling when the page is left.

import { clearKey, get, getKey } from "./api.js";
import { h, replace } from "./dom.js";
import * as nodes from "./pages/nodes.js";
import * as session from "./pages/session.js";
import * as sessions from "./pages/sessions.js";
import * as signin from "./pages/signin.js";
import * as webhooks from "./pages/webhooks.js";

const view = document.getElementById("view");
let unmount = null;
let me = null;

function route() {
  const hash = decodeURIComponent(location.hash.replace(/^#\/?/, ""));
  const [page, ...rest] = hash.split("/");
  if (page === "sessions" && rest.length && rest[0]) return { page: session, name: "sessions", arg: rest.join("/") };
  if (page === "nodes") return { page: nodes, name: "nodes" };
  if (page === "webhooks") return { page: webhooks, name: "webhooks" };
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
    a.hidden = a.dataset.page === "nodes" && me && !me.is_admin;
  });
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
}

function signOut() {
  clearKey();
  me = null;
  render();
}

async function start() {
  document.getElementById("sign-out").addEventListener("click", signOut);
  window.addEventListener("hashchange", render);
  window.addEventListener("zapfleet:unauthorized", () => {
    if (me) signOut();
  });
  if (getKey()) {
    try {
      me = await get("/ui/api/me");
    } catch (err) {
      clearKey();
    }
  }
  render();
}

start().catch((err) => {
  replace(view, h("p", { class: "error" }, `The console failed to start: ${err.message}`));
});
