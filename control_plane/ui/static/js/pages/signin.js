// Sign in with an API key (the admin key or a tenant key). The key is checked against
// /ui/api/me and then kept in sessionStorage for this tab only.

import { get, setKey, setTenant } from "../api.js";
import { h, replace } from "../dom.js";

export function mount(view, { onSignedIn }) {
  const input = h("input", {
    id: "api-key",
    name: "api-key",
    type: "password",
    autocomplete: "current-password",
    required: true,
    minlength: 8,
    placeholder: "zf_… or the admin key",
    spellcheck: "false",
  });
  const error = h("p", { class: "error", id: "signin-error", hidden: true });
  const button = h("button", { type: "submit", id: "signin-submit", class: "primary" }, "Sign in");
  const form = h(
    "form",
    { class: "card signin", id: "signin-form" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Use an API key. It stays in this tab only and is sent in a header, never in a URL."),
    h("label", { for: "api-key" }, "API key"),
    input,
    error,
    button,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    button.disabled = true;
    error.hidden = true;
    try {
      const who = await get("/ui/api/me", { key, tenant: null });
      setKey(key);
      setTenant(null);
      input.value = "";
      onSignedIn(who);
    } catch (err) {
      error.textContent = err.status === 401 ? "This key is not valid." : `Cannot sign in: ${err.message}`;
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  });
  replace(view, form);
  input.focus();
  return null;
}
