// Nodes (admin): capacity, sessions by state, memory, event-loop lag, draining; drain and
// the other node actions the server offers (POST /v1/nodes/{id}/<action>).

import { enc, features, get, listOf, post } from "../api.js";
import { ago, bytes, h, poll, replace, toast } from "../dom.js";

const POLL_MS = 5000;
const ACTIONS = {
  drain: "Drain",
  undrain: "Undrain",
  cordon: "Cordon",
  uncordon: "Uncordon",
};

function capacityBar(n) {
  const used = n.sessions ?? 0;
  const cap = n.capacity || 0;
  const pct = cap ? Math.min(100, Math.round((used / cap) * 100)) : 0;
  return h(
    "div",
    { class: "capacity", title: `${used} of ${cap}` },
    h("div", { class: `capacity-fill${pct >= 85 ? " hot" : ""}`, dataset: { pct: String(pct) } }),
    h("span", {}, `${used} / ${cap}`),
  );
}

function flags(n) {
  const out = [];
  if (n.draining) out.push(h("span", { class: "badge state-draining" }, "DRAINING"));
  if (n.cordoned) out.push(h("span", { class: "badge state-draining" }, "CORDONED"));
  if (n.state && n.state !== "up") out.push(h("span", { class: "badge state-failed" }, String(n.state).toUpperCase()));
  if (!out.length) out.push(h("span", { class: "badge state-connected" }, "UP"));
  return out;
}

function byState(n) {
  const entries = Object.entries(n.by_state || {}).filter(([, count]) => count);
  if (!entries.length) return "–";
  return entries.map(([state, count]) => `${state.toLowerCase()} ${count}`).join(", ");
}

function nodeActions(n, available, refresh) {
  return available
    .filter((action) => {
      if (action === "drain") return !n.draining;
      if (action === "undrain") return n.draining;
      if (action === "cordon") return !n.cordoned;
      if (action === "uncordon") return n.cordoned;
      return true;
    })
    .map((action) => {
      const button = h("button", { type: "button", dataset: { action, node: n.node_id } }, ACTIONS[action]);
      button.addEventListener("click", async () => {
        if (action === "drain" && button.dataset.armed !== "1") {
          button.dataset.armed = "1";
          button.textContent = "Confirm drain";
          return;
        }
        button.disabled = true;
        try {
          const result = await post(`/v1/nodes/${enc(n.node_id)}/${action}`);
          const counts = result && "moved" in result ? `: moved ${result.moved}, skipped ${result.skipped}, failed ${result.failed}` : ": done";
          toast(`${ACTIONS[action]} ${n.node_id}${counts}`);
          refresh();
        } catch (err) {
          toast(`${ACTIONS[action]} failed: ${err.message}`, "error");
          button.disabled = false;
        }
      });
      return button;
    });
}

export function mount(view, { me }) {
  const status = h("p", { class: "muted", id: "nodes-status" }, "Loading…");
  const rows = h("tbody", { id: "nodes-rows" });
  replace(
    view,
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Nodes"),
      status,
      h(
        "table",
        { class: "table" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            ["Node", "Status", "Engine", "Sessions", "By state", "Memory", "Loop lag", "Version", "Heartbeat", ""].map((t) =>
              h("th", {}, t),
            ),
          ),
        ),
        rows,
      ),
    ),
  );
  if (!me.is_admin) {
    status.textContent = "Nodes are shown to the admin key only.";
    return null;
  }
  let stop = () => {};
  let alive = true;
  features().then((f) => {
    if (!alive) return;
    if (!f.has("GET", "/v1/nodes")) {
      status.textContent = "This server does not list nodes.";
      return;
    }
    const available = f.list("POST", /^\/v1\/nodes\/\{\}\/([a-z_-]+)$/).map((m) => m[1]).filter((a) => a in ACTIONS);
    const refresh = async () => {
      try {
        const nodes = listOf(await get("/v1/nodes"), "nodes");
        nodes.sort((a, b) => String(a.node_id).localeCompare(String(b.node_id)));
        replace(
          rows,
          nodes.map((n) =>
            h(
              "tr",
              { dataset: { node: n.node_id } },
              h("td", { class: "nowrap" }, n.node_id),
              h("td", {}, flags(n)),
              h("td", {}, n.engine || "–"),
              h("td", {}, capacityBar(n)),
              h("td", {}, byState(n)),
              h("td", {}, n.memory_limit_bytes ? `${bytes(n.rss_bytes)} / ${bytes(n.memory_limit_bytes)}` : bytes(n.rss_bytes)),
              h("td", { class: "num" }, n.loop_lag_ms !== undefined ? `${Number(n.loop_lag_ms).toFixed(1)} ms` : "–"),
              h("td", {}, n.version || "–"),
              h("td", {}, ago(n.ts)),
              h("td", { class: "row-actions" }, nodeActions(n, available, refresh)),
            ),
          ),
        );
        rows.querySelectorAll(".capacity-fill").forEach((el) => {
          el.style.width = `${el.dataset.pct}%`;
        });
        status.textContent = nodes.length ? `${nodes.length} node(s), live` : "No node has sent a heartbeat.";
        status.classList.remove("error");
      } catch (err) {
        status.textContent = `Cannot list nodes: ${err.message}`;
        status.classList.add("error");
      }
    };
    stop = poll(refresh, POLL_MS);
  });
  return () => {
    alive = false;
    stop();
  };
}
