// Instancetypes and preferences: cluster-wide and namespaced, with what each one sets.
import * as api from '../api.js';
import { h, age } from '../dom.js';

export const IT = '/apis/instancetype.kubevirt.io/v1beta1';

const KINDS = [
  ['VirtualMachineClusterInstancetype', 'virtualmachineclusterinstancetypes', 'Cluster instancetypes'],
  ['VirtualMachineInstancetype', 'virtualmachineinstancetypes', 'Instancetypes'],
  ['VirtualMachineClusterPreference', 'virtualmachineclusterpreferences', 'Cluster preferences'],
  ['VirtualMachinePreference', 'virtualmachinepreferences', 'Preferences'],
];

// Every instancetype (`prefs` false) or preference (`prefs` true) this user may read, with its
// kind: [{ kind, name, namespace, object }].
export async function catalog(prefs) {
  const out = [];
  for (const [kind, plural] of KINDS.filter(([k]) => k.endsWith('Preference') === prefs)) {
    try {
      const l = await api.get(`${IT}/${plural}`);
      for (const o of l.items || []) out.push({ kind, name: o.metadata.name, namespace: o.metadata.namespace || '', object: o });
    } catch (_) {
      /* not readable here */
    }
  }
  return out;
}

function sets(o) {
  const s = o.spec || {};
  const parts = [];
  if (s.cpu?.guest) parts.push(`${s.cpu.guest} vCPU`);
  if (s.memory?.guest) parts.push(`${s.memory.guest} memory`);
  for (const [k, v] of Object.entries(s)) {
    if (k === 'cpu' || k === 'memory') continue;
    if (v && typeof v === 'object') {
      const inner = Object.entries(v).map(([a, b]) => `${a}: ${typeof b === 'object' ? JSON.stringify(b) : b}`).join(', ');
      parts.push(`${k} (${inner})`);
    } else parts.push(`${k}: ${v}`);
  }
  return parts.join('; ') || '—';
}

export function instancetypes(main) {
  main.append(h('h1', {}, 'Instancetypes and preferences'),
    h('p', { class: 'muted' }, 'What a VM created from an instancetype gets (CPU, memory, devices) and the defaults a preference fills in.'));
  const stops = [];
  for (const [kind, plural, title] of KINDS) {
    const body = h('tbody');
    const cluster = kind.includes('Cluster');
    const cols = cluster ? ['Name', 'Sets', 'Age'] : ['Name', 'Namespace', 'Sets', 'Age'];
    main.append(h('h2', {}, title), h('table', { id: `table-${plural}` }, h('thead', {}, h('tr', {}, ...cols.map((c) => h('th', {}, c)))), body));
    stops.push(api.follow(`${IT}/${plural}`, (items) => {
      items.sort((a, b) => `${a.metadata.namespace || ''}/${a.metadata.name}`.localeCompare(`${b.metadata.namespace || ''}/${b.metadata.name}`));
      body.replaceChildren(...(items.length ? items.map((o) => h('tr', { 'data-object': o.metadata.name },
        h('td', {}, o.metadata.name), ...(cluster ? [] : [h('td', {}, o.metadata.namespace || '')]),
        h('td', {}, sets(o)), h('td', {}, age(o.metadata.creationTimestamp))))
        : [h('tr', {}, h('td', { colspan: cols.length, class: 'muted' }, `No ${title.toLowerCase()}.`))]));
    }, (e) => body.replaceChildren(h('tr', {}, h('td', { colspan: cols.length, class: 'error' }, e.message))), 3000));
  }
  return () => stops.forEach((s) => s());
}
