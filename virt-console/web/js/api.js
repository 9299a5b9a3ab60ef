// The node's REST API, called from the browser with the user's bearer token.
// The token lives in sessionStorage (sent as Authorization) and in a SameSite=Strict cookie scoped
// to /console/ws, which the node turns into Authorization for console and VNC websockets.

const KEY = 'virt-console-token';

export const KV = '/apis/kubevirt.io/v1';
export const SUB = '/apis/subresources.kubevirt.io/v1';
export const CDI = '/apis/cdi.kubevirt.io/v1beta1';

export function token() {
  return sessionStorage.getItem(KEY) || '';
}

export function setToken(t) {
  sessionStorage.setItem(KEY, t);
  const secure = location.protocol === 'https:' ? '; Secure' : '';
  document.cookie = `${KEY}=${encodeURIComponent(t)}; path=/console/ws; SameSite=Strict${secure}`;
}

export function clearToken() {
  sessionStorage.removeItem(KEY);
  document.cookie = `${KEY}=; path=/console/ws; max-age=0; SameSite=Strict`;
}

// A refused request: the Kubernetes Status the API answered.
export class ApiError extends Error {
  constructor(status, body, text) {
    const msg = (body && body.message) || text || `HTTP ${status}`;
    super(msg);
    this.status = status;
    this.reason = (body && body.reason) || '';
    this.causes = (body && body.details && body.details.causes) || [];
  }
}

const listeners = new Set();
// `fn()` runs when the API answers 401 (no token, or a token it refused).
export function onUnauthorized(fn) {
  listeners.add(fn);
}

function headers(extra) {
  const h = { Accept: 'application/json', ...extra };
  const t = token();
  if (t) h.Authorization = `Bearer ${t}`;
  return h;
}

export async function request(method, path, { body, contentType, signal } = {}) {
  const h = headers(contentType ? { 'Content-Type': contentType } : {});
  const r = await fetch(path, { method, headers: h, body, signal });
  const text = await r.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch (_) {
    json = null;
  }
  if (r.status === 401) listeners.forEach((fn) => fn());
  if (!r.ok) throw new ApiError(r.status, json, text);
  return json;
}

export const get = (path, opts) => request('GET', path, opts);
export const put = (path) => request('PUT', path, { body: '{}', contentType: 'application/json' });
export const del = (path) => request('DELETE', path);

// Lists `path` and keeps `onItems(items)` up to date: from the API's watch when it streams events
// (`?watch=true`), else by listing again every `everyMs` (the rows are updated in place either
// way, never reloaded). Returns a stop function.
export function follow(path, onItems, onError, everyMs = 1500) {
  let stopped = false;
  let timer = null;
  const ctl = new AbortController();
  const byKey = new Map();
  const key = (o) => `${o.metadata.namespace || ''}/${o.metadata.name}`;
  const emit = () => onItems([...byKey.values()]);

  async function list() {
    const l = await get(path, { signal: ctl.signal });
    byKey.clear();
    for (const o of l.items || []) byKey.set(key(o), o);
    emit();
    return l;
  }

  async function poll() {
    if (stopped) return;
    try {
      await list();
    } catch (e) {
      if (!stopped && onError) onError(e);
    }
    if (!stopped) timer = setTimeout(poll, everyMs);
  }

  async function watch(rv) {
    const sep = path.includes('?') ? '&' : '?';
    const r = await fetch(`${path}${sep}watch=true&resourceVersion=${encodeURIComponent(rv || '')}`, {
      headers: headers({}),
      signal: ctl.signal,
    });
    if (!r.ok || !r.body) return false;
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return true;
      buf += value;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (!line) continue;
        const ev = JSON.parse(line);
        if (!ev.type || !ev.object) return false; // a plain list: no watch here
        if (ev.type === 'DELETED') byKey.delete(key(ev.object));
        else if (ev.type === 'ADDED' || ev.type === 'MODIFIED') byKey.set(key(ev.object), ev.object);
        emit();
      }
      if (buf.startsWith('{"apiVersion"') || buf.startsWith('{"kind"')) {
        // A list answered to ?watch=true: the API has no watch.
        try {
          JSON.parse(buf);
          return false;
        } catch (_) {
          /* not complete yet */
        }
      }
    }
  }

  (async () => {
    try {
      const l = await list();
      // When the watch ends (or the API has none), listing again keeps the rows current.
      await watch(l.metadata && l.metadata.resourceVersion);
    } catch (e) {
      if (stopped) return;
      if (onError) onError(e);
    }
    if (!stopped) timer = setTimeout(poll, everyMs);
  })();

  return () => {
    stopped = true;
    ctl.abort();
    if (timer) clearTimeout(timer);
  };
}
