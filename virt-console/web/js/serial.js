// The serial console: xterm.js over the node's console websocket (through /console/ws, which
// carries the login token). Paste (Ctrl+Shift+V or the button), copy the selection, download
// everything the session printed.
import * as api from './api.js';
import { h, toast } from './dom.js';

export function wsUrl(ns, name, sub) {
  const proto = location.protocol === 'https:' ? 'wss' : 'ws';
  return `${proto}://${location.host}/console/ws${api.SUB}/namespaces/${encodeURIComponent(ns)}/virtualmachineinstances/${encodeURIComponent(name)}/${sub}`;
}

// Why the console's websocket was refused, in words.
export async function refusal(ns, name) {
  try {
    await api.get(`${api.SUB}/namespaces/${encodeURIComponent(ns)}/virtualmachineinstances/${encodeURIComponent(name)}/console`);
    return 'The connection failed; the console is free now: Reconnect.';
  } catch (e) {
    if (e.status === 409 && /in use/.test(e.message)) {
      return `Another viewer holds this console (one interactive session at a time): close it there, then Reconnect. (${e.message})`;
    }
    if (e.status === 400) return 'The connection failed; the console is free now: Reconnect.';
    return `The console refused the connection: ${e.message}`;
  }
}

function stylesheet(href) {
  if (document.querySelector(`link[href="${href}"]`)) return;
  document.head.append(h('link', { rel: 'stylesheet', href }));
}

export function serialConsole(el, ns, name, currentVmi) {
  const state = h('span', { class: 'muted', id: 'serial-state' }, 'Waiting for the VM to run…');
  const box = h('div', { class: 'terminal-box', id: 'serial-terminal' });
  const pasteBtn = h('button', {}, 'Paste');
  const copyBtn = h('button', {}, 'Copy selection');
  const saveBtn = h('button', {}, 'Download log');
  const reconnect = h('button', { hidden: true }, 'Reconnect');
  el.append(h('div', { class: 'toolbar' }, state, h('span', { class: 'spacer' }), pasteBtn, copyBtn, saveBtn, reconnect), box);
  const log = [];
  let term = null;
  let fit = null;
  let ws = null;
  let stopped = false;
  let waiter = null;
  const enc = new TextEncoder();
  const send = (text) => { if (ws && ws.readyState === WebSocket.OPEN) ws.send(enc.encode(text)); };

  pasteBtn.addEventListener('click', async () => {
    try {
      send(await navigator.clipboard.readText());
    } catch (e) {
      toast(`The clipboard could not be read: ${e.message}`, true);
    }
  });
  copyBtn.addEventListener('click', async () => {
    const sel = term ? term.getSelection() : '';
    try {
      await navigator.clipboard.writeText(sel);
      toast(sel ? 'Copied' : 'Nothing selected');
    } catch (e) {
      toast(`The clipboard could not be written: ${e.message}`, true);
    }
  });
  saveBtn.addEventListener('click', () => {
    const blob = new Blob(log, { type: 'application/octet-stream' });
    const a = h('a', { href: URL.createObjectURL(blob), download: `${ns}-${name}-serial.log` });
    document.body.append(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  });
  reconnect.addEventListener('click', () => connect());

  async function start() {
    const [{ Terminal }, { FitAddon }] = await Promise.all([
      import('/console/vendor/xterm/xterm.mjs'),
      import('/console/vendor/xterm/addon-fit.mjs'),
    ]);
    if (stopped) return;
    stylesheet('/console/vendor/xterm/xterm.css');
    term = new Terminal({ convertEol: false, cursorBlink: true, scrollback: 5000, fontSize: 14 });
    fit = new FitAddon();
    term.loadAddon(fit);
    term.open(box);
    fit.fit();
    term.onData(send);
    // Ctrl+Shift+V pastes, Ctrl+Shift+C copies (Ctrl+C and Ctrl+V go to the guest).
    term.attachCustomKeyEventHandler((e) => {
      if (e.type === 'keydown' && e.ctrlKey && e.shiftKey && (e.key === 'V' || e.key === 'v')) { pasteBtn.click(); return false; }
      if (e.type === 'keydown' && e.ctrlKey && e.shiftKey && (e.key === 'C' || e.key === 'c')) { copyBtn.click(); return false; }
      return true;
    });
    window.addEventListener('resize', onResize);
    wait();
  }
  const onResize = () => fit && fit.fit();

  function wait() {
    if (stopped) return;
    const vmi = currentVmi();
    if (vmi && vmi.status?.phase === 'Running') connect();
    else waiter = setTimeout(wait, 1000);
  }

  function connect() {
    reconnect.hidden = true;
    state.textContent = 'Connecting…';
    ws = new WebSocket(wsUrl(ns, name, 'console'), ['plain.kubevirt.io']);
    ws.binaryType = 'arraybuffer';
    let opened = false;
    ws.onopen = () => { opened = true; state.textContent = 'Connected'; term.focus(); send('\r'); };
    ws.onmessage = (m) => {
      const bytes = typeof m.data === 'string' ? enc.encode(m.data) : new Uint8Array(m.data);
      log.push(bytes);
      term.write(bytes);
    };
    ws.onclose = async (e) => {
      if (stopped) return;
      if (!opened) {
        // A browser cannot read why an upgrade was refused: ask the API the same question
        // without upgrading (it answers the Status, e.g. that another viewer holds the console).
        const why = await refusal(ns, name);
        state.textContent = why;
        state.dataset.refused = 'true';
        reconnect.hidden = false;
        return;
      }
      state.textContent = e.code === 1000 || e.code === 1005 ? 'Disconnected: the console closed.' : `Disconnected (${e.code}${e.reason ? `: ${e.reason}` : ''}).`;
      reconnect.hidden = false;
    };
  }

  start().catch((e) => { state.textContent = `The terminal could not start: ${e.message}`; });
  return () => {
    stopped = true;
    clearTimeout(waiter);
    window.removeEventListener('resize', onResize);
    if (ws) ws.close();
    if (term) term.dispose();
  };
}
