// The streaming client: one turn over POST /api/chat/stream (Server-Sent Events over a fetch body, since
// EventSource cannot POST), and re-attaching to an answer the app is still writing (GET
// /api/chat/turns/{id}/events with Last-Event-ID). The app writes the answer whether or not anyone listens:
// aborting a request (AbortSignal) only stops listening; stopping the answer is POST .../stop (app.js).
//
// streamTurn and resumeTurn resolve to {outcome, ...}:
//   "done" | "error" | "stopped"  the turn ended with that event (handlers were called for every event);
//   "rejected"        the server refused before storing anything ({error: ApiError}; e.g. 404, 422);
//   "dropped"         the connection broke ({started}: whether the message was stored, i.e. "start" came).

import { errorFromResponse } from "./api.js";

export async function* sseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      let data = "";
      let id = null;
      for (const line of frame.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).replace(/^ /, "");
        else if (line.startsWith("id:")) id = line.slice(3).trim();
      }
      if (data) yield { event, data: JSON.parse(data), id };
    }
  }
}

// Read a turn's events, calling handlers[event](data, id) for each; the end the stream came to.
async function follow(response, handlers, signal, started) {
  const requestId = response.headers.get("X-Request-ID");
  let lastEventId = null;
  const events = sseEvents(response.body);
  for (;;) {
    let next;
    try {
      next = await events.next();
    } catch (err) {
      return { outcome: "dropped", started, lastEventId, requestId, aborted: Boolean(signal && signal.aborted) };
    }
    if (next.done) break;
    const { event, data, id } = next.value;
    if (id !== null) lastEventId = id;
    if (event === "start") started = true;
    const handler = handlers[event];
    if (handler) handler(data, id);
    if (event === "done" || event === "error" || event === "stopped") {
      return { outcome: event, data, requestId, lastEventId };
    }
  }
  return { outcome: "dropped", started, lastEventId, requestId, aborted: Boolean(signal && signal.aborted) };
}

// request: {message, sessionId, retryOf}; handlers: {start, sources, delta, done, error, stopped} (optional).
export async function streamTurn(request, handlers, { signal } = {}) {
  let response;
  try {
    response = await fetch("/api/chat/stream", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify({
        message: request.message || "",
        session_id: request.sessionId || null,
        retry_of: request.retryOf || null,
      }),
      signal,
    });
  } catch (err) {
    return { outcome: "dropped", started: false, lastEventId: null, aborted: Boolean(signal && signal.aborted) };
  }
  if (!response.ok) return { outcome: "rejected", error: await errorFromResponse(response) };
  return follow(response, handlers, signal, false);
}

// Re-attach to the answer to `userMessageId` that the app is writing: the events after `lastEventId` (all of
// them when null), then the rest. "rejected" with status 404 when no such answer is being written.
export async function resumeTurn(userMessageId, lastEventId, handlers, { signal } = {}) {
  const headers = { Accept: "text/event-stream" };
  if (lastEventId) headers["Last-Event-ID"] = String(lastEventId);
  let response;
  try {
    response = await fetch(`/api/chat/turns/${encodeURIComponent(userMessageId)}/events`, { headers, signal });
  } catch (err) {
    return { outcome: "dropped", started: true, lastEventId, aborted: Boolean(signal && signal.aborted) };
  }
  if (!response.ok) return { outcome: "rejected", error: await errorFromResponse(response) };
  const result = await follow(response, handlers, signal, true);
  if (result.lastEventId === null) result.lastEventId = lastEventId;
  return result;
}
