// Small DOM helpers: elements from tag/attributes/children, text, times, dialogs, toasts.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function age(ts) {
  if (!ts) return '';
  const s = Math.max(0, (Date.now() - Date.parse(ts)) / 1000);
  if (s < 60) return `${Math.floor(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

export function status(text) {
  return h('span', { class: `status ${text || ''}` }, text || '—');
}

// Asks `question`; resolves true when the user confirms.
export function confirmAction(question, okLabel = 'Confirm') {
  const d = document.getElementById('confirm');
  document.getElementById('confirm-text').textContent = question;
  document.getElementById('confirm-ok').textContent = okLabel;
  d.returnValue = '';
  d.showModal();
  return new Promise((resolve) => {
    d.addEventListener('close', () => resolve(d.returnValue === 'ok'), { once: true });
  });
}

export function toast(message, bad = false) {
  const t = h('div', { class: bad ? 'bad' : '' }, message);
  document.getElementById('toast').append(t);
  setTimeout(() => t.remove(), bad ? 8000 : 4000);
}

export function navigate(url) {
  history.pushState(null, '', url);
  window.dispatchEvent(new Event('popstate'));
}

// A link handled by the application's router (no page load).
export function link(href, ...children) {
  return h('a', { href, onclick: (e) => {
    if (e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
    e.preventDefault();
    navigate(href);
  } }, ...children);
}
