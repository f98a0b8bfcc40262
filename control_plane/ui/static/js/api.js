// The HTTP API client of the console. The API key lives in sessionStorage (gone when the
// tab closes) and is sent only in the Authorization header: never in a URL, never in a
// cookie. Which endpoints the server offers is read from its OpenAPI document, so pages
// hide what a server does not have instead of calling it.
//
// The admin key acts for one tenant at a time: the tenant picked in the top bar is kept in
// sessionStorage too and sent as X-Tenant-Id, exactly as any API client would.

const KEY = "zapfleet.apiKey";
const TENANT = "zapfleet.tenant";
export const DEFAULT_TENANT = "default";

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export function getKey() {
  return sessionStorage.getItem(KEY);
}

export function setKey(key) {
  sessionStorage.setItem(KEY, key);
}

export function clearKey() {
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(TENANT);
}

// The tenant the admin key acts for (X-Tenant-Id); null for a tenant key.
export function getTenant() {
  return sessionStorage.getItem(TENANT);
}

export function setTenant(tenant) {
  if (tenant) sessionStorage.setItem(TENANT, tenant);
  else sessionStorage.removeItem(TENANT);
}

async function problemOf(response) {
  const type = response.headers.get("content-type") || "";
  if (type.includes("json")) {
    try {
      return await response.json();
    } catch (err) {
      // fall through
    }
  }
  return { title: response.statusText || `HTTP ${response.status}`, status: response.status };
}

// `tenant`: the X-Tenant-Id to send (default: the picked one; null sends none).
export async function request(method, path, body, { key = getKey(), accept, tenant = getTenant() } = {}) {
  const headers = { Accept: accept || "application/json" };
  if (key) headers.Authorization = `Bearer ${key}`;
  if (tenant) headers["X-Tenant-Id"] = tenant;
  const init = { method, headers, cache: "no-store", credentials: "omit", redirect: "error" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) {
    const problem = await problemOf(response);
    const error = new ApiError(response.status, problem);
    if (response.status === 401) window.dispatchEvent(new CustomEvent("zapfleet:unauthorized"));
    // the picked tenant was deleted meanwhile (X-Tenant-Id names no tenant)
    if (tenant && problem.type === "urn:zapfleet:problem:tenant_not_found" && !path.startsWith("/v1/tenants")) {
      window.dispatchEvent(new CustomEvent("zapfleet:tenant-gone", { detail: tenant }));
    }
    throw error;
  }
  if (response.status === 204) return null;
  if (accept && !accept.includes("json")) return response.blob();
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

export const get = (path, opts) => request("GET", path, undefined, opts);
export const post = (path, body, opts) => request("POST", path, body, opts);
export const del = (path, opts) => request("DELETE", path, undefined, opts);
export const put = (path, body, opts) => request("PUT", path, body, opts);

export const enc = encodeURIComponent;

// -- features ----------------------------------------------------------------------------

let featuresPromise = null;

function normalize(path) {
  return path.replace(/\{[^}]*\}/g, "{}").replace(/\/$/, "");
}

// Resolves to an object with has(method, path), list(method, regex) -> matches,
// find(method, predicate) -> path and query(method, path) -> the names of the operation's
// query parameters. Paths are compared with parameters written as {}.
export function features() {
  if (!featuresPromise) {
    featuresPromise = fetch("/schema/openapi.json", { cache: "no-store", credentials: "omit" })
      .then((r) => (r.ok ? r.json() : { paths: {} }))
      .catch(() => ({ paths: {} }))
      .then((doc) => {
        const ops = new Set();
        const queries = new Map();
        for (const [path, item] of Object.entries(doc.paths || {})) {
          for (const [method, op] of Object.entries(item)) {
            const id = `${method.toUpperCase()} ${normalize(path)}`;
            ops.add(id);
            const params = (op && Array.isArray(op.parameters) ? op.parameters : []).filter((p) => p && p.in === "query");
            queries.set(id, params.map((p) => p.name));
          }
        }
        return {
          has: (method, path) => ops.has(`${method} ${normalize(path)}`),
          query: (method, path) => queries.get(`${method} ${normalize(path)}`) || [],
          list: (method, regex) => {
            const found = [];
            for (const op of ops) {
              const [m, p] = op.split(" ");
              const match = m === method && p.match(regex);
              if (match) found.push(match);
            }
            return found;
          },
          find: (method, predicate) => {
            for (const op of ops) {
              const [m, p] = op.split(" ");
              if (m === method && predicate(p)) return p;
            }
            return null;
          },
        };
      });
  }
  return featuresPromise;
}

// Lists may come bare or wrapped ({items: [...]}, {sessions: [...]}, ...).
export function listOf(body, ...names) {
  if (Array.isArray(body)) return body;
  if (!body || typeof body !== "object") return [];
  for (const name of [...names, "items", "data", "results"]) {
    if (Array.isArray(body[name])) return body[name];
  }
  return [];
}
