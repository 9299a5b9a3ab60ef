// Compliance: the last `virt-compliance` scan's results (ComplianceCheckResult objects, as the
// OpenShift Compliance Operator writes them): a count per status, failures first, filters and
// search kept in the URL, each rule's finding and remediation one click away.
import * as api from '../api.js';
import { h, age } from '../dom.js';

export const CCR = '/apis/compliance.openshift.io/v1alpha1/compliancecheckresults';
export const STATUSES = ['FAIL', 'ERROR', 'PASS', 'NOT-APPLICABLE'];
const SEVERITY = ['high', 'medium', 'low', 'info', 'unknown'];

const scanOf = (o) => o.metadata?.labels?.['compliance.openshift.io/scan-name'] || '';
const rank = (list, v) => { const i = list.indexOf(v); return i < 0 ? list.length : i; };

// The results to show for `q` ({ status, scan, search }): failures and errors first, then by
// severity (high first), then by name.
export function complianceRows(items, q = {}) {
  const s = (q.search || '').toLowerCase();
  return items
    .filter((o) => !q.status || o.status === q.status)
    .filter((o) => !q.scan || scanOf(o) === q.scan)
    .filter((o) => !s || [o.metadata?.name, o.id, o.description].some((t) => (t || '').toLowerCase().includes(s)))
    .sort((a, b) => rank(STATUSES, a.status) - rank(STATUSES, b.status)
      || rank(SEVERITY, a.severity) - rank(SEVERITY, b.severity)
      || a.metadata.name.localeCompare(b.metadata.name));
}

// Counts per status (every status present, zeros included), the scans seen and when the last
// scan ran (the newest creationTimestamp).
export function complianceSummary(items) {
  const counts = Object.fromEntries(STATUSES.map((s) => [s, 0]));
  for (const o of items) counts[o.status] = (counts[o.status] || 0) + 1;
  const scans = [...new Set(items.map(scanOf).filter(Boolean))].sort();
  const scanned = items.map((o) => o.metadata?.creationTimestamp || '').sort().pop() || '';
  return { counts, scans, scanned };
}

export function compliance(main, query) {
  const q = { status: query.get('status') || '', scan: query.get('scan') || '', search: query.get('q') || '' };
  const cards = h('div', { class: 'cards', id: 'compliance-counts' });
  const when = h('p', { class: 'muted', id: 'compliance-when' });
  const search = h('input', { type: 'search', placeholder: 'Search rules', value: q.search, 'aria-label': 'Search rules' });
  const stSel = h('select', { 'aria-label': 'Status', id: 'compliance-status' }, h('option', { value: '' }, 'Any status'),
    ...STATUSES.map((s) => h('option', { value: s }, s)));
  stSel.value = q.status;
  const scanSel = h('select', { 'aria-label': 'Scan', id: 'compliance-scan' }, h('option', { value: '' }, 'Every scan'));
  const count = h('span', { class: 'muted', id: 'compliance-count' });
  const body = h('tbody');
  main.append(
    h('h1', {}, 'Compliance'),
    h('p', { class: 'muted' }, 'The node checked against OpenSCAP\'s Debian content and the project\'s own rules (TLS, authentication, hostDisk and emulation gates, launcher confinement, audit). Run a new scan on the node with ',
      h('code', {}, 'virt-compliance --state-dir <state dir>'), '.'),
    cards, when,
    h('div', { class: 'toolbar' }, search, stSel, scanSel, count),
    h('table', { id: 'compliance-table' }, h('thead', {}, h('tr', {}, ...['Status', 'Severity', 'Rule', 'Scan'].map((c) => h('th', {}, c)))), body),
  );
  let items = [];
  function sync() {
    const p = new URLSearchParams();
    if (q.status) p.set('status', q.status);
    if (q.scan) p.set('scan', q.scan);
    if (q.search) p.set('q', q.search);
    const s = p.toString();
    history.replaceState(null, '', `/console/compliance${s ? `?${s}` : ''}`);
    draw();
  }
  search.addEventListener('input', () => { q.search = search.value; sync(); });
  stSel.addEventListener('change', () => { q.status = stSel.value; sync(); });
  scanSel.addEventListener('change', () => { q.scan = scanSel.value; sync(); });
  function draw() {
    const sum = complianceSummary(items);
    cards.replaceChildren(...STATUSES.map((s) => h('a', { href: '#', class: 'card', 'data-status': s, onclick: (e) => {
      e.preventDefault(); q.status = q.status === s ? '' : s; stSel.value = q.status; sync();
    } }, h('div', { class: `stat status ${s}` }, String(sum.counts[s])), h('div', { class: 'muted' }, s))));
    when.textContent = sum.scanned ? `Last scan ${age(sum.scanned)} ago (${sum.scanned}).` : '';
    const keep = scanSel.value;
    scanSel.replaceChildren(h('option', { value: '' }, 'Every scan'), ...sum.scans.map((s) => h('option', { value: s }, s)));
    scanSel.value = sum.scans.includes(q.scan) ? q.scan : keep && sum.scans.includes(keep) ? keep : '';
    const rows = complianceRows(items, q);
    count.textContent = `${rows.length} of ${items.length} rules`;
    if (!items.length) {
      body.replaceChildren(h('tr', {}, h('td', { colspan: 4, class: 'muted' },
        'No scan results yet: run virt-compliance on the node; its results appear here.')));
      return;
    }
    body.replaceChildren(...(rows.length ? rows.map((o) => h('tr', { 'data-rule': o.metadata.name },
      h('td', {}, h('span', { class: `status ${o.status}` }, o.status)),
      h('td', {}, o.severity || ''),
      h('td', {}, h('details', {}, h('summary', {}, o.description || o.id, ' ', h('code', { class: 'muted' }, o.metadata.name)),
        h('dl', { class: 'props' },
          h('dt', {}, 'Rule'), h('dd', {}, h('code', {}, o.id || '')),
          h('dt', {}, 'Seen'), h('dd', {}, o.detail || '—'),
          h('dt', {}, 'Remediation'), h('dd', {}, o.remediation || '—')))),
      h('td', {}, scanOf(o))))
      : [h('tr', {}, h('td', { colspan: 4, class: 'muted' }, 'No rule matches these filters.'))]));
  }
  return api.follow(CCR, (list) => { items = list; draw(); },
    (e) => body.replaceChildren(h('tr', {}, h('td', { colspan: 4, class: 'error' }, e.message))), 5000);
}
