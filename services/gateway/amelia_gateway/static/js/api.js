// The gateway's HTTP/JSON API (`/v1/...`), as any client in any language would call it.
//
// Bodies are protobuf JSON (lowerCamelCase). Errors come back as a google.rpc.Status JSON body
// ({code, message, details}) with grpc-gateway's HTTP status; they surface here as ApiError,
// whose message is the service's own sentence. A 401 also fires "amelia:unauthorized" so the app
// can ask for the token.

import { getToken } from "./auth.js";

const GRPC_CODES = [
  "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
  "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
  "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
];

export class ApiError extends Error {
  constructor(httpStatus, body) {
    const message = (body && body.message) || (httpStatus
      ? `The gateway answered HTTP ${httpStatus}`
      : "The gateway is unreachable; is `amelia up` running?");
    super(message);
    this.name = "ApiError";
    this.httpStatus = httpStatus;
    this.code = body && typeof body.code === "number" ? GRPC_CODES[body.code] || String(body.code) : "";
    this.details = (body && body.details) || [];
  }
}

function authHeaders() {
  const token = getToken();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function queryString(query) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query || {})) {
    if (value === undefined || value === null || value === "") continue;
    for (const item of Array.isArray(value) ? value : [value]) params.append(key, String(item));
  }
  const text = params.toString();
  return text ? `?${text}` : "";
}

async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (response.status === 401) window.dispatchEvent(new CustomEvent("amelia:unauthorized"));
  return new ApiError(response.status, body);
}

/** One HTTP/JSON call. `timeout` (seconds) is also sent upstream as the call's deadline. */
export async function request(method, path, { body, query, signal, timeout } = {}) {
  const headers = { Accept: "application/json", ...authHeaders() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (timeout) headers["X-Request-Timeout"] = String(timeout);
  let response;
  try {
    response = await fetch(`${path}${queryString(query)}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
    });
  } catch (error) {
    if (error && error.name === "AbortError") throw error;
    throw new ApiError(0, null);
  }
  if (!response.ok) throw await errorFrom(response);
  if (response.status === 204) return {};
  return response.json();
}

const get = (path, query, options = {}) => request("GET", path, { ...options, query });
const post = (path, body, options = {}) => request("POST", path, { ...options, body });

/** `runs/abc` or `abc` -> `abc`, for building paths. */
function id(name) {
  return encodeURIComponent(String(name).split("/").pop());
}

export const api = {
  status: (options) => get("/v1/status", undefined, options),

  listWorkflows: () => get("/v1/workflows"),
  listAgents: (query = {}) => get("/v1/agents", { pageSize: 200, ...query }),
  createAgent: (agent, agentId) => post("/v1/agents", { agent, agentId }),
  updateAgent: (agent, updateMask) => request("PATCH", `/v1/agents/${id(agent.name)}`, { body: { agent, updateMask } }),
  deleteAgent: (name) => request("DELETE", `/v1/agents/${id(name)}`),

  createRun: (run, requestId) => post("/v1/runs", { run, requestId }),
  getRun: (name) => get(`/v1/runs/${id(name)}`),
  deleteRun: (name) => request("DELETE", `/v1/runs/${id(name)}`),
  listRuns: (query = {}) => get("/v1/runs", query),
  listRunSteps: (name, query = {}) => get(`/v1/runs/${id(name)}/steps`, query),
  rerunRun: (name, requestId) => post(`/v1/runs/${id(name)}:rerun`, { requestId }),
  forkRun: (name, checkpoint, values, requestId) => post(`/v1/runs/${id(name)}:fork`, { checkpoint, values, requestId }),
  listThreads: (query = {}) => get("/v1/threads", query),
  getThread: (thread) => get(`/v1/threads/${id(thread)}`),
  // `metadata`: UpdateThread's merge patch (a key given null is removed).
  updateThread: (thread, metadata) => request("PATCH", `/v1/threads/${id(thread)}`, { body: { thread: { metadata } } }),
  copyThread: (thread) => post(`/v1/threads/${id(thread)}:copy`, {}),
  getThreadState: (thread, checkpoint = "") => get(`/v1/threads/${id(thread)}/state${checkpoint ? `/${encodeURIComponent(checkpoint)}` : ""}`),
  listThreadHistory: (thread, query = {}) => get(`/v1/threads/${id(thread)}/history`, query),
  // `checkpoint`: write on that one (a branch from it) instead of the latest.
  updateThreadState: (thread, values, asNode = "", checkpoint = "") =>
    post(`/v1/threads/${id(thread)}/state`, checkpoint ? { values, asNode, checkpoint } : { values, asNode }),
  cancelRun: (name, reason) => post(`/v1/runs/${id(name)}:cancel`, { reason }),
  resumeRun: (name, answer) => post(`/v1/runs/${id(name)}:resume`, { answer }),

  // Crons (CronService): scheduled runs.
  listCrons: (query = {}) => get("/v1/crons", query),
  createCron: (cron) => post("/v1/crons", { cron }),
  updateCron: (cron, updateMask) => request("PATCH", `/v1/crons/${id(cron.name)}`, { body: { cron, updateMask } }),
  deleteCron: (name) => request("DELETE", `/v1/crons/${id(name)}`),
  triggerCron: (name, requestId) => post(`/v1/crons/${id(name)}:trigger`, { requestId }),

  listEvents: (query = {}) => get("/v1/events", query),

  listDocuments: (query = {}) => get("/v1/documents", query),
  deleteDocument: (name) => request("DELETE", `/v1/documents/${id(name)}`),
  search: (body) => post("/v1/search", body),
};

/**
 * Upload one file as multipart/form-data with XMLHttpRequest (fetch cannot report upload
 * progress). `onProgress(sentBytes, totalBytes)`; resolves with the IngestDocument/UploadDocument
 * response; `signal` aborts it.
 */
export function uploadDocument(file, { onProgress, signal, fields = {} } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/documents");
    xhr.responseType = "text";
    xhr.setRequestHeader("Accept", "application/json");
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (event) => {
      if (onProgress) onProgress(event.loaded, event.lengthComputable ? event.total : file.size);
    };
    xhr.onload = () => {
      let body = null;
      try {
        body = xhr.responseText ? JSON.parse(xhr.responseText) : {};
      } catch {
        body = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(body || {});
        return;
      }
      if (xhr.status === 401) window.dispatchEvent(new CustomEvent("amelia:unauthorized"));
      reject(new ApiError(xhr.status, body));
    };
    xhr.onerror = () => reject(new ApiError(0, null));
    xhr.onabort = () => reject(new DOMException("upload cancelled", "AbortError"));
    if (signal) signal.addEventListener("abort", () => xhr.abort(), { once: true });
    const form = new FormData();
    // Form fields must come before the file part (the gateway streams the file as it arrives).
    for (const [name, value] of Object.entries(fields)) form.append(name, value);
    form.append("file", file, file.name);
    xhr.send(form);
  });
}
