// VirtualMachines: status, namespace, node, IP, age; filters, search and sort kept in the URL;
// rows updated in place as the API reports changes; power actions with confirmation.
import * as api from '../api.js';
import { h, age, link, status } from '../dom.js';
import { actionsFor, power, vmKey, vmStatus, vmiAddress } from './common.js';

const columns = [
  ['name', 'Name'], ['namespace', 'Namespace'], ['status', 'Status'], ['node', 'Node'], ['ip', 'IP address'], ['age', 'Age'],
];

export function vmList(main, query) {
  const q = { search: query.get('q') || '', ns: query.get('ns') || '', status: query.get('status') || '', sort: query.get('sort') || 'name' };
  const search = h('input', { type: 'search', placeholder: 'Search by name', value: q.search, 'aria-label': 'Search by name' });
  const nsSel = h('select', { 'aria-label': 'Namespace' }, h('option', { value: '' }, 'All namespaces'));
  const stSel = h('select', { 'aria-label': 'Status' }, h('option', { value: '' }, 'Any status'));
  const count = h('span', { class: 'muted' });
  const body = h('tbody');
  const head = h('tr', {}, ...columns.map(([k, label]) => h('th', { class: 'sortable', 'data-col': k, onclick: () => { q.sort = q.sort === k ? `-${k}` : k; sync(); } }, label)), h('th', {}, 'Actions'));
  main.append(
    h('div', { class: 'toolbar' }, h('h1', { style: 'margin:0' }, 'VirtualMachines'), h('span', { class: 'spacer' }), link('/console/create', h('button', { class: 'primary' }, 'Create'))),
    h('div', { class: 'toolbar' }, search, nsSel, stSel, count),
    h('table', { id: 'vm-table' }, h('thead', {}, head), body),
  );
  let vms = [];
  let vmis = new Map();
  const rows = new Map();

  function sync() {
    const p = new URLSearchParams();
    if (q.search) p.set('q', q.search);
    if (q.ns) p.set('ns', q.ns);
    if (q.status) p.set('status', q.status);
    if (q.sort !== 'name') p.set('sort', q.sort);
    const s = p.toString();
    history.replaceState(null, '', `/console/vms${s ? `?${s}` : ''}`);
    draw();
  }
  search.addEventListener('input', () => { q.search = search.value.trim(); sync(); });
  nsSel.addEventListener('change', () => { q.ns = nsSel.value; sync(); });
  stSel.addEventListener('change', () => { q.status = stSel.value; sync(); });

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
    r.replaceChildren(
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
    const want = shown.map(([vm, f]) => row(vm, f));
    // Reorder only what moved: rows keep their identity (and focus) across updates.
    want.forEach((r, i) => { if (body.children[i] !== r) body.insertBefore(r, body.children[i] || null); });
    while (body.children.length > want.length) body.lastChild.remove();
    for (const k of [...rows.keys()]) if (!vms.some((vm) => vmKey(vm) === k)) rows.delete(k);
    count.textContent = `${shown.length} of ${all.length}`;
    if (!all.length) body.replaceChildren(h('tr', {}, h('td', { colspan: 7, class: 'muted' }, 'No virtual machines yet. Create one from YAML.')));
  }

  const onError = (e) => { count.textContent = `The list could not be refreshed: ${e.message}`; };
  const stops = [
    api.follow(`${api.KV}/virtualmachines`, (items) => { vms = items; draw(); }, onError),
    api.follow(`${api.KV}/virtualmachineinstances`, (items) => { vmis = new Map(items.map((i) => [vmKey(i), i])); draw(); }, onError),
  ];
  const ticker = setInterval(draw, 30000);
  return () => { stops.forEach((s) => s()); clearInterval(ticker); };
}
