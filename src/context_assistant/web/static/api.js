// The JSON API: one fetch wrapper, and errors that carry what people should read plus the request id that
// ties them to the server log.

export class ApiError extends Error {
  constructor(message, status, data, requestId) {
    super(message);
    this.status = status;
    this.data = data;
    this.requestId = requestId || (data && data.request_id) || null;
  }
}

export const UNREACHABLE = "The app could not be reached. Check your connection and try again.";

// What to say when a response carries no usable error text (a proxy's HTML page, an empty body).
export function statusMessage(status) {
  if (status === 401 || status === 403) return "You are not signed in to the app any more. Reload the page to sign in again.";
  if (status === 404) return "That was not found; it may have been deleted. Reload the page to see what is there now.";
  if (status === 413) return "That is too large for the app to accept. Shorten it and try again.";
  if (status === 429) return "The app is busy. Wait a moment and try again.";
  if (status >= 500) return "The app had a problem. Try again in a minute; if it keeps happening, tell the app's administrator.";
  return "The app could not do that. Reload the page and try again.";
}

export async function errorFromResponse(response) {
  let data = null;
  try {
    data = await response.json();
  } catch (err) {
    data = null;
  }
  const text = data && typeof data.error === "string" && data.error ? data.error : statusMessage(response.status);
  return new ApiError(text, response.status, data, (data && data.request_id) || response.headers.get("X-Request-ID"));
}

export async function api(method, path, body) {
  const init = { method, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(UNREACHABLE, 0, null, null);
  }
  if (!response.ok) throw await errorFromResponse(response);
  if (response.status === 204) return null;
  try {
    return await response.json();
  } catch (err) {
    throw new ApiError(statusMessage(500), response.status, null, response.headers.get("X-Request-ID"));
  }
}
