// The VNC console: noVNC over the node's vnc websocket, with Ctrl-Alt-Del and other key
// combinations, and clipboard paste typed into the guest.
import { h, toast } from './dom.js';
import * as api from './api.js';
import { wsUrl } from './serial.js';

// Why the VNC websocket closed before the display answered, in words: the API answers a plain
// GET of the same path with the same checks (a browser cannot read a refused upgrade's status).
async function vncRefusal(ns, name) {
  try {
    await api.get(`${api.SUB}/namespaces/${encodeURIComponent(ns)}/virtualmachineinstances/${encodeURIComponent(name)}/vnc`);
    return 'Disconnected: the VNC server closed the connection (another viewer may hold it).';
  } catch (e) {
    if (e.status === 400) return 'Disconnected: the VNC server closed the connection (another viewer may hold it).';
    return `The VNC display refused the connection: ${e.message}`;
  }
}

export function vncConsole(el, ns, name, currentVmi) {
  const state = h('span', { class: 'muted', id: 'vnc-state' }, 'Waiting for the VM to run…');
  const screen = h('div', { class: 'vnc-box', id: 'vnc-screen' });
  const cad = h('button', { disabled: true }, 'Send Ctrl-Alt-Del');
  const keys = h('select', { 'aria-label': 'Send keys', disabled: true },
    h('option', { value: '' }, 'Send key…'),
    ...['Ctrl-Alt-F1', 'Ctrl-Alt-F2', 'Ctrl-Alt-F7', 'Ctrl-Alt-Backspace', 'Alt-Tab', 'Alt-F4', 'Escape', 'Tab'].map((k) => h('option', { value: k }, k)));
  const paste = h('button', { disabled: true }, 'Type clipboard');
  const reconnect = h('button', { hidden: true }, 'Reconnect');
  el.append(h('div', { class: 'toolbar' }, state, h('span', { class: 'spacer' }), cad, keys, paste, reconnect), screen);
  let rfb = null;
  let stopped = false;
  let waiter = null;
  let RFB = null;

  const KS = { Ctrl: 0xffe3, Alt: 0xffe9, Shift: 0xffe1, Backspace: 0xff08, Tab: 0xff09, Escape: 0xff1b, Delete: 0xffff };
  const keysym = (k) => KS[k] || (/^F(\d+)$/.test(k) ? 0xffbe + Number(k.slice(1)) - 1 : k.charCodeAt(0));
  function combo(spec) {
    const parts = spec.split('-').map(keysym);
    if (!rfb) return;
    parts.forEach((s) => rfb.sendKey(s, null, true));
    [...parts].reverse().forEach((s) => rfb.sendKey(s, null, false));
  }
  cad.addEventListener('click', () => { if (rfb) rfb.sendCtrlAltDel(); });
  keys.addEventListener('change', () => { if (rfb && keys.value) combo(keys.value); keys.value = ''; });
  paste.addEventListener('click', async () => {
    try {
      const text = await navigator.clipboard.readText();
      for (const ch of text) if (rfb) rfb.sendKey(ch === '\n' ? 0xff0d : ch.codePointAt(0));
    } catch (e) {
      toast(`The clipboard could not be read: ${e.message}`, true);
    }
  });
  reconnect.addEventListener('click', () => connect());

  function enable(on) {
    cad.disabled = !on;
    keys.disabled = !on;
    paste.disabled = !on;
  }

  function connect() {
    reconnect.hidden = true;
    state.textContent = 'Connecting…';
    screen.replaceChildren();
    rfb = new RFB(screen, wsUrl(ns, name, 'vnc'), { wsProtocols: ['plain.kubevirt.io'] });
    rfb.scaleViewport = true;
    let opened = false;
    rfb.addEventListener('connect', () => { opened = true; state.textContent = 'Connected'; enable(true); });
    rfb.addEventListener('disconnect', async (e) => {
      rfb = null;
      enable(false);
      if (stopped) return;
      if (e.detail.clean && opened) state.textContent = 'Disconnected.';
      else state.textContent = opened ? 'Disconnected: the VNC server closed the connection (another viewer may hold it).' : await vncRefusal(ns, name);
      reconnect.hidden = false;
    });
  }

  function wait() {
    if (stopped) return;
    const vmi = currentVmi();
    if (vmi && vmi.status?.phase === 'Running') connect();
    else waiter = setTimeout(wait, 1000);
  }

  import('/console/vendor/novnc/core/rfb.js').then((m) => { RFB = m.default; wait(); })
    .catch((e) => { state.textContent = `noVNC could not start: ${e.message}`; });
  return () => {
    stopped = true;
    clearTimeout(waiter);
    if (rfb) rfb.disconnect();
  };
}
