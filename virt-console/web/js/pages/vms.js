// VirtualMachines: status, namespace, node, IP, age; filters, search, sort and page kept in the
// URL; rows updated in place as the API reports changes; power actions with confirmation, per row
// or for the selected rows at once.
import * as api from '../api.js';
import { h, age, confirmAction, link, status, toast } from '../dom.js';
import { actionsFor, deleteVm, power, vmKey, vmStatus, vmiAddress } from './common.js';

const PER_PAGE = [25, 50, 100, 250];
const BULK = [['Start', 'start', 'vm'], ['Stop', 'stop', 'vm'], ['Restart', 'restart', 'vm'], ['Pause', 'pause', 'vmi'], ['Unpause', 'unpause', 'vmi']];

const columns = [
  ['name', 'Name'], ['namespace', 'Namespace'], ['status', 'Status'], ['node', 'Node'], ['ip', 'IP address'], ['age', 'Age'],
];

export function vmList(main, query) {
  const q = {
    search: query.get('q') || '', ns: query.get('ns') || '', status: query.get('status') || '', sort: query.get('sort') || 'name',
    page: Math.max(1, parseInt(query.get('page') || '1', 10) || 1),
    per: PER_PAGE.includes(parseInt(query.get('per') || '', 10)) ? parseInt(query.get('per'), 10) : 50,
  };
  const selected = new Set();
  const selectAll = h('input', { type: 'checkbox', 'aria-label': 'Select all shown', id: 'vm-select-all' });
  const bulkCount = h('span', { class: 'muted', id: 'bulk-count' });
  const bulkBar = h('div', { class: 'toolbar bulk', id: 'bulk-actions' }, bulkCount,
    ...BULK.map(([label, verb, target]) => h('button', { 'data-bulk': verb, class: verb === 'stop' ? 'danger' : '', onclick: () => bulk(label, verb, target) }, label)));
  const perSel = h('select', { 'aria-label': 'Rows per page', id: 'vm-per-page' }, ...PER_PAGE.map((n) => h('option', { value: String(n) }, `${n} per page`)));
  perSel.value = String(q.per);
  const prev = h('button', { id: 'vm-prev', onclick: () => { q.page -= 1; sync(); } }, '‹ Previous');
  const next = h('button', { id: 'vm-next', onclick: () => { q.page += 1; sync(); } }, 'Next ›');
  const pageInfo = h('span', { class: 'muted', id: 'vm-page' });
  const search = h('input', { type: 'search', placeholder: 'Search by name', value: q.search, 'aria-label': 'Search by name' });
  const nsSel = h('select', { 'aria-label': 'Namespace' }, h('option', { value: '' }, 'All namespaces'));
  const stSel = h('select', { 'aria-label': 'Status' }, h('option', { value: '' }, 'Any status'));
  const count = h('span', { class: 'muted', id: 'vm-count' });
  const body = h('tbody');
  const head = h('tr', {}, h('th', { class: 'check' }, selectAll), ...columns.map(([k, label]) => h('th', { class: 'sortable', 'data-col': k, onclick: () => { q.sort = q.sort === k ? `-${k}` : k; sync(); } }, label)), h('th', {}, 'Actions'));
  main.append(
    h('div', { class: 'toolbar' }, h('h1', { style: 'margin:0' }, 'VirtualMachines'), h('span', { class: 'spacer' }), link('/console/create', h('button', { class: 'primary' }, 'Create'))),
    h('div', { class: 'toolbar' }, search, nsSel, stSel, count),
    bulkBar,
    h('table', { id: 'vm-table' }, h('thead', {}, head), body),
    h('div', { class: 'toolbar pager' }, prev, pageInfo, next, perSel),
  );
  let shownKeys = [];
  selectAll.addEventListener('change', () => {
    for (const k of shownKeys) if (selectAll.checked) selected.add(k); else selected.delete(k);
    for (const k of shownKeys) { const c = rows.get(k)?.querySelector('input[type=checkbox]'); if (c) c.checked = selectAll.checked; }
    drawBulk();
  });
  perSel.addEventListener('change', () => { q.per = parseInt(perSel.value, 10); q.page = 1; sync(); });
  function drawBulk() {
    for (const k of [...selected]) if (!vms.some((vm) => vmKey(vm) === k)) selected.delete(k);
    bulkCount.textContent = selected.size ? `${selected.size} selected` : 'Select rows for bulk actions';
    bulkBar.querySelectorAll('button').forEach((b) => { b.disabled = !selected.size; });
  }
  // One confirmation for every selected VM; the requests go out a few at a time.
  async function bulk(label, verb, target) {
    const keys = [...selected];
    if (!keys.length) return;
    const list = keys.length > 6 ? `${keys.slice(0, 6).join(', ')} and ${keys.length - 6} more` : keys.join(', ');
    if (!(await confirmAction(`${label} ${keys.length} virtual machine${keys.length > 1 ? 's' : ''}: ${list}?`, `${label} ${keys.length}`))) return;
    const what = target === 'vm' ? 'virtualmachines' : 'virtualmachineinstances';
    const failed = [];
    const queue = [...keys];
    const worker = async () => {
      for (let k = queue.shift(); k; k = queue.shift()) {
        const [ns, name] = k.split('/');
        try {
          await api.put(`${api.SUB}/namespaces/${encodeURIComponent(ns)}/${what}/${encodeURIComponent(name)}/${verb}`);
        } catch (e) {
          failed.push(`${k}: ${e.message}`);
        }
      }
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
    if (failed.length) toast(`${label} failed for ${failed.length} of ${keys.length}: ${failed.slice(0, 3).join('; ')}`, true);
    else toast(`${label}: ${keys.length} virtual machine${keys.length > 1 ? 's' : ''}`);
    selected.clear();
    rows.forEach((r) => { const c = r.querySelector('input[type=checkbox]'); if (c) c.checked = false; });
    selectAll.checked = false;
    drawBulk();
  }
  let vms = [];
  let vmis = new Map();
  const rows = new Map();

  function sync() {
    const p = new URLSearchParams();
    if (q.search) p.set('q', q.search);
    if (q.ns) p.set('ns', q.ns);
    if (q.status) p.set('status', q.status);
    if (q.sort !== 'name') p.set('sort', q.sort);
    if (q.page > 1) p.set('page', String(q.page));
    if (q.per !== 50) p.set('per', String(q.per));
    const s = p.toString();
    history.replaceState(null, '', `/console/vms${s ? `?${s}` : ''}`);
    draw();
  }
  search.addEventListener('input', () => { q.search = search.value.trim(); q.page = 1; sync(); });
  nsSel.addEventListener('change', () => { q.ns = nsSel.value; q.page = 1; sync(); });
  stSel.addEventListener('change', () => { q.status = stSel.value; q.page = 1; sync(); });

  function options(sel, values, current) {
    const have = [...sel.options].map((o) => o.value);
    for (const v of values) if (!have.includes(v)) sel.append(h('option', { value: v }, v));
    sel.value = current;
  }

  function facts(vm) {
    const vmi = vmis.get(vmKey(vm));
    return {
      name: vm.metadata.name, namespace: vm.metadata.namespace, status: vmStatus(vm, vmi),
      node: vmi?.status?.nodeName || '', ip: vmiAddress(vmi), age: vm.metadata.creationTimestamp || '',
    };
  }

  function row(vm, f) {
    const key = vmKey(vm);
    let r = rows.get(key);
    if (!r) {
      r = h('tr', { 'data-vm': key });
      rows.set(key, r);
    }
    const sig = JSON.stringify(f);
    if (r.dataset.sig === sig) return r;
    r.dataset.sig = sig;
    const href = `/console/vms/${encodeURIComponent(f.namespace)}/${encodeURIComponent(f.name)}`;
    const actions = actionsFor(f.status).map(([label, verb, target]) => h('button', {
      class: verb === 'stop' ? 'danger' : '',
      onclick: () => power(f.namespace, f.name, label, verb, target),
    }, label));
    actions.push(h('button', { class: 'danger', 'data-action': 'delete', onclick: () => deleteVm(f.namespace, f.name) }, 'Delete'));
    const check = h('input', { type: 'checkbox', 'aria-label': `Select ${key}`, 'data-select': key });
    check.checked = selected.has(key);
    check.addEventListener('change', () => { if (check.checked) selected.add(key); else selected.delete(key); drawBulk(); });
    r.replaceChildren(
      h('td', { class: 'check' }, check),
      h('td', {}, link(href, f.name)), h('td', {}, f.namespace), h('td', { class: 'vm-status' }, status(f.status)),
      h('td', {}, f.node), h('td', {}, f.ip), h('td', { title: f.age }, age(f.age)), h('td', { class: 'actions' }, actions),
    );
    return r;
  }

  function draw() {
    const all = vms.map((vm) => [vm, facts(vm)]);
    options(nsSel, [...new Set(all.map(([, f]) => f.namespace))].sort(), q.ns);
    options(stSel, [...new Set(all.map(([, f]) => f.status))].sort(), q.status);
    const needle = q.search.toLowerCase();
    const shown = all.filter(([, f]) => (!needle || f.name.toLowerCase().includes(needle))
      && (!q.ns || f.namespace === q.ns) && (!q.status || f.status === q.status));
    const desc = q.sort.startsWith('-');
    const col = q.sort.replace(/^-/, '');
    shown.sort(([, a], [, b]) => {
      const c = col === 'age' ? String(b.age).localeCompare(String(a.age)) : String(a[col] ?? '').localeCompare(String(b[col] ?? ''), undefined, { numeric: true });
      return desc ? -c : c || a.namespace.localeCompare(b.namespace);
    });
    head.querySelectorAll('th[data-col]').forEach((th) => {
      th.ariaSort = th.dataset.col === col ? (desc ? 'descending' : 'ascending') : null;
    });
    const pages = Math.max(1, Math.ceil(shown.length / q.per));
    if (q.page > pages) q.page = pages;
    const page = shown.slice((q.page - 1) * q.per, q.page * q.per);
    shownKeys = page.map(([vm]) => vmKey(vm));
    prev.disabled = q.page <= 1;
    next.disabled = q.page >= pages;
    pageInfo.textContent = `Page ${q.page} of ${pages}`;
    const want = page.map(([vm, f]) => row(vm, f));
    // Reorder only what moved: rows keep their identity (and focus) across updates.
    want.forEach((r, i) => { if (body.children[i] !== r) body.insertBefore(r, body.children[i] || null); });
    while (body.children.length > want.length) body.lastChild.remove();
    const live = new Set(vms.map(vmKey));
    for (const k of [...rows.keys()]) if (!live.has(k)) rows.delete(k);
    count.textContent = `${shown.length} of ${all.length}`;
    count.dataset.shown = String(shown.length);
    if (!all.length) body.replaceChildren(h('tr', {}, h('td', { colspan: 8, class: 'muted' }, 'No virtual machines yet. Create one.')));
    selectAll.checked = shownKeys.length > 0 && shownKeys.every((k) => selected.has(k));
    drawBulk();
  }

  const onError = (e) => { count.textContent = `The list could not be refreshed: ${e.message}`; };
  const stops = [
    api.follow(`${api.KV}/virtualmachines`, (items) => { vms = items; draw(); }, onError),
    api.follow(`${api.KV}/virtualmachineinstances`, (items) => { vmis = new Map(items.map((i) => [vmKey(i), i])); draw(); }, onError),
  ];
  const ticker = setInterval(draw, 30000);
  return () => { stops.forEach((s) => s()); clearInterval(ticker); };
}
