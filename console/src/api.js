// Calls Herald's API with the signed-in token (Authorization header, never the URL).

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export async function call(token, method, path, body) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, { method, headers, body, cache: "no-store", credentials: "omit" });
  } catch (e) {
    throw new ApiError(0, `Herald did not answer (${e.message})`);
  }
  const text = await response.text();
  let data = text;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    // Not JSON (/metrics): the text itself.
  }
  if (!response.ok) {
    const detail = data && typeof data === "object" && data.error ? data.error : response.statusText;
    throw new ApiError(response.status, `${response.status}: ${detail}`);
  }
  return data;
}

export const seg = encodeURIComponent;

// The session: kept in sessionStorage only (gone when the tab closes), never in a URL.
const KEY = "herald.console.session";

export function loadSession() {
  try {
    const s = JSON.parse(sessionStorage.getItem(KEY) || "null");
    return s && s.token && (s.role === "tenant" || s.role === "admin") ? s : null;
  } catch {
    return null;
  }
}

export function saveSession(session) {
  if (session) sessionStorage.setItem(KEY, JSON.stringify(session));
  else sessionStorage.removeItem(KEY);
}
