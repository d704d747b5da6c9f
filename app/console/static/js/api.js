// Every call to the /v1 API: the Bearer key from sessionStorage, the error shape, uploads with
// progress (XMLHttpRequest: fetch has no upload progress) and the job event stream (fetch + a parser of
// our own: EventSource cannot send an Authorization header).

const KEY_NAME = "promptune.apiKey";
const NETWORK_MESSAGE = "Could not reach the Promptune API. Check the connection and try again.";

export class ApiError extends Error {
  constructor(status, code, message, param = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.param = param;
  }
}

// sessionStorage only: the key is gone when the tab closes, and it is never put in a URL or logged.
export const session = {
  key: () => sessionStorage.getItem(KEY_NAME),
  signIn: (key) => sessionStorage.setItem(KEY_NAME, key),
  signOut: () => sessionStorage.removeItem(KEY_NAME),
};

let onUnauthorized = () => {};
/** The app's handler for a 401: back to sign-in with the API's message. */
export function setUnauthorizedHandler(handler) {
  onUnauthorized = handler;
}

function authHeaders(extra = {}) {
  const key = session.key();
  return key ? { Authorization: `Bearer ${key}`, ...extra } : { ...extra };
}

export function idempotencyKey() {
  return crypto.randomUUID();
}

async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const detail = body && body.error ? body.error : null;
  const error = detail
    ? new ApiError(response.status, detail.code, detail.message || response.statusText, detail.param ?? null)
    : new ApiError(response.status, `http_${response.status}`, `The API answered ${response.status} ${response.statusText}.`);
  if (response.status === 401) onUnauthorized(error);
  return error;
}

async function send(path, { method = "GET", body, headers = {}, signal } = {}) {
  let response;
  try {
    response = await fetch(path, { method, body, headers: authHeaders(headers), signal, cache: "no-store" });
  } catch (exc) {
    if (exc && exc.name === "AbortError") throw exc;
    throw new ApiError(0, "network_error", NETWORK_MESSAGE);
  }
  if (!response.ok) throw await errorFrom(response);
  return response;
}

/** JSON in, JSON out; a 204 gives null. */
export async function api(path, { method = "GET", json, form, headers = {}, signal } = {}) {
  let body;
  const extra = { Accept: "application/json", ...headers };
  if (json !== undefined) {
    body = JSON.stringify(json);
    extra["Content-Type"] = "application/json";
  } else if (form !== undefined) {
    body = form; // the browser writes the multipart boundary
  }
  const response = await send(path, { method, body, headers: extra, signal });
  if (response.status === 204) return null;
  return response.json();
}

export async function apiText(path, opts = {}) {
  return (await send(path, opts)).text();
}

export async function apiBlob(path, opts = {}) {
  return (await send(path, opts)).blob();
}

/** Query string from an object, leaving out empty values. */
export function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(name, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/**
 * POST a multipart form with upload progress. onProgress(loaded, total) while sending.
 * Resolves with the parsed JSON; rejects with ApiError.
 */
export function uploadWithProgress(path, form, { headers = {}, onProgress = () => {} } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    for (const [name, value] of Object.entries(authHeaders({ Accept: "application/json", ...headers }))) {
      xhr.setRequestHeader(name, value);
    }
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) onProgress(event.loaded, event.total);
    };
    xhr.upload.onload = () => onProgress(1, 1);
    xhr.onerror = () => reject(new ApiError(0, "network_error", NETWORK_MESSAGE));
    xhr.onload = () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        body = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) return resolve(body);
      const detail = body && body.error;
      const error = detail
        ? new ApiError(xhr.status, detail.code, detail.message, detail.param ?? null)
        : new ApiError(xhr.status, `http_${xhr.status}`, `The API answered ${xhr.status}.`);
      if (xhr.status === 401) onUnauthorized(error);
      reject(error);
    };
    xhr.send(form);
  });
}

/** Split an SSE byte stream into frames {id, event, data}; comments (":") are keep-alives and skipped. */
export class SseParser {
  constructor() {
    this.buffer = "";
  }

  push(text) {
    this.buffer += text.replace(/\r\n?/g, "\n");
    const frames = [];
    let end;
    while ((end = this.buffer.indexOf("\n\n")) >= 0) {
      const block = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + 2);
      const frame = { id: null, event: "message", data: [] };
      for (const line of block.split("\n")) {
        if (line === "" || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "id") frame.id = value;
        else if (field === "event") frame.event = value;
        else if (field === "data") frame.data.push(value);
      }
      if (frame.data.length) frames.push({ ...frame, data: frame.data.join("\n") });
    }
    return frames; // a frame cut by a dropped connection stays in the buffer and is never emitted
  }
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
});

/**
 * Follow a job's events live. onEvent(event) for each parsed event (JSON of JobEventPublic); the stream
 * reconnects with Last-Event-ID after a drop, and ends when isDone() says the job is terminal and the
 * server closed the stream. onConnection(state) reports "open" | "reconnecting" | "closed".
 */
export async function followEvents(jobId, { onEvent, isDone, onConnection = () => {}, signal }) {
  let lastId = null;
  let failures = 0;
  while (!signal.aborted) {
    const headers = { Accept: "text/event-stream" };
    if (lastId !== null) headers["Last-Event-ID"] = lastId;
    try {
      const response = await send(`/v1/jobs/${encodeURIComponent(jobId)}/events`, { headers, signal });
      onConnection("open");
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      const parser = new SseParser();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        for (const frame of parser.push(decoder.decode(value, { stream: true }))) {
          if (frame.id !== null) lastId = frame.id;
          failures = 0;
          let event;
          try {
            event = JSON.parse(frame.data);
          } catch {
            continue;
          }
          onEvent(event);
        }
      }
    } catch (exc) {
      if (signal.aborted) break;
      if (exc instanceof ApiError && exc.status >= 400 && exc.status < 500) throw exc;
    }
    if (signal.aborted || isDone()) break;
    failures += 1;
    onConnection("reconnecting");
    await sleep(Math.min(500 * 2 ** Math.min(failures, 5), 10000), signal);
  }
  onConnection("closed");
}
