// Small charts of a VM's recent CPU, memory, disk and network figures, from the node's /metrics
// (Prometheus text format, KubeVirt's metric names), scraped every few seconds while shown.
import * as api from './api.js';
import { h } from './dom.js';

// The samples of a text-format scrape: [{ name, labels, value }].
export function parseMetrics(text) {
  const out = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] || '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[l[1]] = l[2].replace(/\\n/g, '\n').replace(/\\"/g, '"').replace(/\\\\/g, '\\');
    }
    out.push({ name: m[1], labels, value: parseFloat(m[3]) });
  }
  return out;
}

const SERIES = [
  ['cpu', 'CPU', (v) => `${(v * 100).toFixed(0)}%`, ['kubevirt_vmi_cpu_usage_seconds_total'], true],
  ['memory', 'Memory (resident)', (v) => `${(v / 1048576).toFixed(0)} MiB`, ['kubevirt_vmi_memory_resident_bytes'], false],
  ['disk', 'Storage I/O', (v) => `${(v / 1024).toFixed(0)} KiB/s`, ['kubevirt_vmi_storage_read_traffic_bytes_total', 'kubevirt_vmi_storage_write_traffic_bytes_total'], true],
  ['network', 'Network', (v) => `${(v / 1024).toFixed(1)} KiB/s`, ['kubevirt_vmi_network_receive_bytes_total', 'kubevirt_vmi_network_transmit_bytes_total'], true],
];

export function charts(el, ns, name, everyMs = 3000, keep = 40) {
  const grid = h('div', { class: 'charts' });
  const state = h('p', { class: 'muted', id: 'charts-state' });
  el.append(grid, state);
  const history = new Map(SERIES.map(([k]) => [k, []]));
  const boxes = new Map();
  for (const [k, title] of SERIES) {
    const now = h('div', { class: 'now' }, '—');
    const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
    svg.setAttribute('viewBox', `0 0 ${keep} 60`);
    svg.setAttribute('preserveAspectRatio', 'none');
    const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
    svg.append(line);
    const card = h('div', { class: 'card chart', 'data-chart': k }, h('div', { class: 'muted' }, title), now, svg);
    grid.append(card);
    boxes.set(k, { now, line, card });
  }
  let last = null;
  let timer = null;
  let stopped = false;
  async function scrape() {
    try {
      const r = await fetch('/metrics', { headers: api.token() ? { Authorization: `Bearer ${api.token()}` } : {} });
      if (!r.ok) throw new Error(`/metrics answered ${r.status}`);
      const samples = parseMetrics(await r.text()).filter((s) => s.labels.name === name && s.labels.namespace === ns);
      const t = performance.now() / 1000;
      const sum = (names) => {
        const got = samples.filter((s) => names.includes(s.name));
        return got.length ? got.reduce((a, s) => a + s.value, 0) : null;
      };
      for (const [k, , fmt, names, rate] of SERIES) {
        const v = sum(names);
        const hist = history.get(k);
        const b = boxes.get(k);
        if (v === null) { b.now.textContent = 'not reported'; continue; }
        let point = v;
        if (rate) {
          const prev = last && last[k];
          point = prev != null && t > last.t ? Math.max(0, (v - prev) / (t - last.t)) : null;
        }
        if (point !== null) hist.push(point);
        if (hist.length > keep) hist.shift();
        b.now.textContent = point === null ? '…' : fmt(point);
        b.card.dataset.points = String(hist.length);
        b.card.dataset.last = String(point ?? '');
        const max = Math.max(...hist, rate && k === 'cpu' ? 1 : 1e-9);
        b.line.setAttribute('points', hist.map((p, i) => `${i + keep - hist.length},${(58 - (p / max) * 56).toFixed(2)}`).join(' '));
      }
      last = { t, ...Object.fromEntries(SERIES.map(([k, , , names]) => [k, sum(names)])) };
      state.textContent = samples.length ? '' : 'No figures for this VM yet (it is not running on this node).';
    } catch (e) {
      state.textContent = `Metrics could not be read: ${e.message}`;
    }
    if (!stopped) timer = setTimeout(scrape, everyMs);
  }
  scrape();
  return () => { stopped = true; clearTimeout(timer); };
}
