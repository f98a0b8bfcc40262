#!/usr/bin/env node
// Runs operations of the n8n community node `n8n-nodes-evolution-api` (its own request
// builders: dist/nodes/EvolutionApi/execute/<resource>/<operation>.js) against a real
// Evolution API server — here zapfleet's Evolution facade (tests/test_evolution_n8n.py).
//
//   node harness.js <server-url> <apikey>
//
// stdin: one JSON object per line, one operation each:
//   {"op": "chat/readMessages", "params": {...}, "apikey": "...", "continueOnFail": false}
//   `params` are the node's parameters (getNodeParameter names; dotted names such as
//   "contacts.contactValues" may be given flat or nested); `apikey` overrides the
//   credential for this operation (an instance token); `continueOnFail` is n8n's node setting.
// stdout: one JSON line per operation, in order:
//   {"op", "ok": true, "json": <the node's output item>, "requests": [{method, url, status}]}
//   (the output item as the node's execute() makes it: returnJsonArray of what the
//   operation returned; most operations return {success: true, data: <answer>})
//   {"op", "ok": false, "error": {"name", "message", "description"}, "requests": [...]}
//   (`requests` also has the answer's `body` of a request that failed)
// Nothing is mocked: helpers.request is request-promise's contract implemented with fetch.
"use strict";

const path = require("node:path");
const readline = require("node:readline");

const EXECUTE = path.join(
  path.dirname(require.resolve("n8n-nodes-evolution-api/package.json")),
  "dist", "nodes", "EvolutionApi", "execute",
);

const NODE = {
  id: "zapfleet-harness",
  name: "Evolution API",
  type: "n8n-nodes-evolution-api.evolutionApi",
  typeVersion: 1,
  position: [0, 0],
  parameters: {},
};

class StatusCodeError extends Error {
  // request-promise's rejection for a non-2xx answer (n8n's helpers.request keeps it)
  constructor(statusCode, body, options) {
    super(`${statusCode} - ${typeof body === "string" ? body : JSON.stringify(body)}`);
    this.name = "StatusCodeError";
    this.statusCode = statusCode;
    this.error = body;
    this.options = options;
  }
}

async function request(options, log) {
  // request-promise options: method, uri, qs, headers, body, json
  const url = new URL(options.uri);
  for (const [key, value] of Object.entries(options.qs || {})) {
    if (value !== undefined) url.searchParams.append(key, String(value));
  }
  const headers = { ...(options.headers || {}) };
  let body;
  if (options.body !== undefined) {
    if (options.json) {
      body = JSON.stringify(options.body);
      if (!Object.keys(headers).some((h) => h.toLowerCase() === "content-type")) {
        headers["content-type"] = "application/json";
      }
    } else {
      body = typeof options.body === "string" ? options.body : JSON.stringify(options.body);
    }
  }
  if (options.json) headers.accept = headers.accept || "application/json";
  const method = (options.method || "GET").toUpperCase();
  const response = await fetch(url, { method, headers, body });
  const text = await response.text();
  const entry = { method, url: url.pathname + url.search, status: response.status };
  log.push(entry);
  let parsed = text;
  if (options.json && text) {
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = text;
    }
  }
  if (response.status < 200 || response.status > 299) {
    entry.body = parsed;
    throw new StatusCodeError(response.status, parsed, options);
  }
  return parsed;
}

function returnJsonArray(data) {
  // n8n-core's helpers.returnJsonArray: items that have `json` are kept, others wrapped
  return (Array.isArray(data) ? data : [data]).map((item) =>
    item && item.json ? { ...item, json: item.json } : { json: item });
}

function parameter(params, name) {
  if (Object.prototype.hasOwnProperty.call(params, name)) return { found: true, value: params[name] };
  let current = params;
  for (const part of name.split(".")) {
    if (current === null || typeof current !== "object" || !(part in current)) return { found: false };
    current = current[part];
  }
  return { found: true, value: current };
}

function executeFunctions(serverUrl, apikey, params, continueOnFail, log) {
  return {
    getInputData: () => [{ json: {} }],
    getNodeParameter(name, _itemIndex, ...fallback) {
      const got = parameter(params, name);
      if (got.found) return got.value;
      if (fallback.length > 0) return fallback[0];
      throw new Error(`Could not get parameter "${name}"`);
    },
    getCredentials: async (type) => {
      if (type !== "evolutionApi") throw new Error(`unknown credential type ${type}`);
      return { "server-url": serverUrl, apikey };
    },
    continueOnFail: () => continueOnFail,
    getNode: () => NODE,
    helpers: { request: (options) => request(options, log) },
  };
}

async function run(serverUrl, apikey, spec) {
  const log = [];
  const out = { op: spec.op, requests: log };
  try {
    const module = require(path.join(EXECUTE, ...spec.op.split("/")));
    const fn = module[path.basename(spec.op)];
    if (typeof fn !== "function") throw new Error(`${spec.op} exports no function`);
    const ef = executeFunctions(
      serverUrl, spec.apikey || apikey, spec.params || {}, Boolean(spec.continueOnFail), log,
    );
    // EvolutionApi.node.js execute(): `[this.helpers.returnJsonArray(await fn(this))]`
    const items = returnJsonArray(await fn(ef));
    out.ok = true;
    out.json = items[0].json;
  } catch (error) {
    out.ok = false;
    out.error = {
      name: error.name || "Error",
      message: String(error.message),
      description: error.description || null,
    };
  }
  return out;
}

async function main() {
  const [serverUrl, apikey] = process.argv.slice(2);
  if (!serverUrl || !apikey) {
    process.stderr.write("usage: node harness.js <server-url> <apikey> < operations.jsonl\n");
    process.exit(2);
  }
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of lines) {
    if (!line.trim()) continue;
    const result = await run(serverUrl.replace(/\/$/, ""), apikey, JSON.parse(line));
    process.stdout.write(JSON.stringify(result) + "\n");
  }
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
