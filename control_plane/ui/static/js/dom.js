// Small DOM helpers. Every piece of data goes in through textContent or attributes,
// never through innerHTML, so nothing the API returns can become markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2).toLowerCase(), value);
    } else if (name === "class") {
      el.className = value;
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else if (value === true) {
      el.setAttribute(name, "");
    } else {
      el.setAttribute(name, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function badge(state) {
  const text = state || "UNKNOWN";
  return h("span", { class: `badge state-${text.toLowerCase()}`, "data-state": text }, text);
}

export function ago(epochSeconds) {
  if (!epochSeconds) return "–";
  const s = Math.max(0, Date.now() / 1000 - epochSeconds);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function bytes(n) {
  if (n === undefined || n === null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(v >= 10 || i === 0 ? 0 : 1)} ${units[i]}`;
}

export function phone(digits) {
  return digits ? `+${digits}` : "–";
}

let toastTimer = 0;
export function toast(message, kind = "info") {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.className = `toast toast-${kind}`;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    el.hidden = true;
  }, 5000);
}

// Run `task` now and then every `ms` after it finishes, until stopped; skips ticks while
// the tab is hidden. Returns a stop function.
export function poll(task, ms) {
  let stopped = false;
  let timer = 0;
  const tick = async () => {
    if (stopped) return;
    if (!document.hidden) {
      try {
        await task();
      } catch (err) {
        // the page shows the error; keep polling so it recovers by itself
      }
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

// Ask before a destructive action. A modal <dialog> says what the action does; resolves
// true when the user confirms, false on Cancel or Escape.
export function confirmAction({ title, text, confirm, danger = true }) {
  return new Promise((resolve) => {
    const ok = h("button", { type: "button", class: danger ? "danger" : "primary", id: "confirm-ok" }, confirm);
    const cancel = h("button", { type: "button", id: "confirm-cancel" }, "Cancel");
    const dialog = h(
      "dialog",
      { class: "confirm", id: "confirm-dialog", "aria-labelledby": "confirm-title" },
      h("h2", { id: "confirm-title" }, title),
      (Array.isArray(text) ? text : [text]).map((line) => h("p", { class: "confirm-text" }, line)),
      h("div", { class: "actions" }, cancel, ok),
    );
    let answered = false;
    const done = (answer) => {
      if (answered) return;
      answered = true;
      dialog.close();
      dialog.remove();
      resolve(answer);
    };
    ok.addEventListener("click", () => done(true));
    cancel.addEventListener("click", () => done(false));
    dialog.addEventListener("cancel", (event) => {
      event.preventDefault();
      done(false);
    });
    document.body.append(dialog);
    dialog.showModal();
    cancel.focus();
  });
}
