// What several pages share: VM status and addresses, power actions.
import * as api from '../api.js';
import { confirmAction, toast } from '../dom.js';

export const vmKey = (o) => `${o.metadata.namespace}/${o.metadata.name}`;

export function vmStatus(vm, vmi) {
  if (vmi && (vmi.status?.conditions || []).some((c) => c.type === 'Paused' && c.status === 'True')) return 'Paused';
  return vm.status?.printableStatus || (vmi ? vmi.status?.phase : 'Stopped') || 'Stopped';
}

export function vmiAddress(vmi) {
  for (const i of vmi?.status?.interfaces || []) {
    if (i.ipAddress) return i.ipAddress;
    if (i.ipAddresses && i.ipAddresses.length) return i.ipAddresses[0];
  }
  return '';
}

// The power actions a VM in `status` offers: [label, verb, subresource target].
export function actionsFor(status) {
  const running = ['Running', 'Starting', 'Migrating', 'Paused', 'Provisioning', 'Scheduling'].includes(status);
  const out = [];
  if (!running || status === 'Stopped') out.push(['Start', 'start', 'vm']);
  if (running) out.push(['Stop', 'stop', 'vm'], ['Restart', 'restart', 'vm']);
  if (status === 'Running') out.push(['Pause', 'pause', 'vmi']);
  if (status === 'Paused') out.push(['Unpause', 'unpause', 'vmi']);
  return out;
}

export async function power(ns, name, label, verb, target) {
  const what = target === 'vm' ? 'virtualmachines' : 'virtualmachineinstances';
  if (!(await confirmAction(`${label} virtual machine ${ns}/${name}?`, label))) return false;
  try {
    await api.put(`${api.SUB}/namespaces/${encodeURIComponent(ns)}/${what}/${encodeURIComponent(name)}/${verb}`);
    toast(`${label}: ${ns}/${name}`);
    return true;
  } catch (e) {
    toast(`${label} ${ns}/${name} failed: ${e.message}`, true);
    return false;
  }
}

// Deletes VM `ns/name` after a confirmation; resolves true when deleted.
export async function deleteVm(ns, name) {
  if (!(await confirmAction(`Delete virtual machine ${ns}/${name}? Its disks created for it go too.`, 'Delete'))) return false;
  try {
    await api.del(`${api.KV}/namespaces/${encodeURIComponent(ns)}/virtualmachines/${encodeURIComponent(name)}`);
    toast(`Deleted ${ns}/${name}`);
    return true;
  } catch (e) {
    toast(`Deleting ${ns}/${name} failed: ${e.message}`, true);
    return false;
  }
}

export async function namespaces() {
  try {
    const l = await api.get('/api/v1/namespaces');
    return (l.items || []).map((n) => n.metadata.name).sort();
  } catch (_) {
    return ['default'];
  }
}

// Events of every namespace (or of `ns`), newest first.
export async function events(ns) {
  const list = ns ? [ns] : await namespaces();
  const all = [];
  for (const n of list) {
    try {
      const l = await api.get(`/api/v1/namespaces/${encodeURIComponent(n)}/events`);
      all.push(...(l.items || []));
    } catch (_) {
      /* a namespace the user may not read */
    }
  }
  const t = (e) => Date.parse(e.lastTimestamp || e.firstTimestamp || e.metadata?.creationTimestamp || 0) || 0;
  return all.sort((a, b) => t(b) - t(a));
}
