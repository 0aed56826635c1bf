// The streaming client: one turn over POST /api/chat/stream (Server-Sent Events over a fetch body, since
// EventSource cannot POST). Everything about the transport of a turn lives here, so that re-attaching to an
// answer in progress (GET with Last-Event-ID) and stopping one can be added in this one module: the event
// ids are already tracked (lastEventId) and the request takes an AbortSignal.
//
// streamTurn resolves to {outcome, ...}:
//   "done" | "error"  the turn ended with that event (handlers were called for every event);
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

// request: {message, sessionId, retryOf}; handlers: {start, sources, delta, done, error} (each optional).
export async function streamTurn(request, handlers, { signal } = {}) {
  let started = false;
  let lastEventId = null;
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
    return { outcome: "dropped", started, lastEventId, aborted: Boolean(signal && signal.aborted) };
  }
  if (!response.ok) return { outcome: "rejected", error: await errorFromResponse(response) };
  const requestId = response.headers.get("X-Request-ID");
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
    if (handler) handler(data);
    if (event === "done" || event === "error") return { outcome: event, data, requestId, lastEventId };
  }
  return { outcome: "dropped", started, lastEventId, requestId, aborted: false };
}
