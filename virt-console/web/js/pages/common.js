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

// Live migration, as KubeVirt's console does it: a VirtualMachineInstanceMigration named by the
// API server (generateName), cancelled by deleting it.
export function migrationRequest(ns, name) {
  return {
    path: `${api.KV}/namespaces/${encodeURIComponent(ns)}/virtualmachineinstancemigrations`,
    body: {
      apiVersion: 'kubevirt.io/v1',
      kind: 'VirtualMachineInstanceMigration',
      metadata: { generateName: 'kubevirt-migrate-vm-', namespace: ns },
      spec: { vmiName: name },
    },
  };
}

// Whether the VMI can move: its LiveMigratable condition ({can, why}); unknown counts as yes.
export function liveMigratable(vmi) {
  const c = (vmi?.status?.conditions || []).find((x) => x.type === 'LiveMigratable');
  if (!c || c.status === 'True') return { can: true, why: '' };
  return { can: false, why: `${c.reason || 'NotMigratable'}: ${c.message || 'the VMI cannot be live-migrated'}` };
}

// A migration of the VMI under way (its migrationState not completed).
export function migrating(vmi) {
  const m = vmi?.status?.migrationState;
  return !!m && !m.completed;
}

// The unfinished migration object of VMI `name` among `items`.
export function activeMigration(items, name) {
  return (items || []).find((m) => m.spec?.vmiName === name && !['Succeeded', 'Failed'].includes(m.status?.phase));
}

// The VMI's last migration as [label, value] rows (kept on the VMI after the object is gone).
export function migrationSummary(vmi) {
  const m = vmi?.status?.migrationState;
  if (!m) return [];
  let outcome = 'in progress';
  if (m.completed) outcome = m.failed ? `failed${m.failureReason ? `: ${m.failureReason}` : ''}` : 'succeeded';
  if (m.abortStatus) outcome += ` (abort ${m.abortStatus.toLowerCase()})`;
  const stats = m.migrationStats || {};
  const rows = [
    ['Outcome', outcome],
    ['Mode', m.mode || 'PreCopy'],
    ['Source', [m.sourceNode, m.sourcePod].filter(Boolean).join(' / ') || '—'],
    ['Target', [m.targetNode, m.targetPod].filter(Boolean).join(' / ') || '—'],
    ['Started', m.startTimestamp || '—'],
    ['Ended', m.endTimestamp || '—'],
  ];
  if (stats.downtimeUs !== undefined) rows.push(['Downtime', `${(stats.downtimeUs / 1000).toFixed(1)} ms`]);
  if (stats.totalUs !== undefined) rows.push(['Total', `${(stats.totalUs / 1000).toFixed(1)} ms`]);
  if (stats.bytesSent !== undefined) rows.push(['Sent', `${(stats.bytesSent / 1048576).toFixed(1)} MiB`]);
  return rows;
}

export async function migrate(ns, name) {
  if (!(await confirmAction(`Live-migrate virtual machine ${ns}/${name}?`, 'Migrate'))) return false;
  const r = migrationRequest(ns, name);
  try {
    const made = await api.request('POST', r.path, { body: JSON.stringify(r.body), contentType: 'application/json' });
    toast(`Migrating ${ns}/${name} (${made?.metadata?.name || 'migration created'})`);
    return true;
  } catch (e) {
    toast(`Migrating ${ns}/${name} failed: ${e.message}`, true);
    return false;
  }
}

export async function cancelMigration(ns, name) {
  if (!(await confirmAction(`Cancel the migration of ${ns}/${name}? The VM keeps running where it is.`, 'Cancel migration'))) return false;
  try {
    const path = `${api.KV}/namespaces/${encodeURIComponent(ns)}/virtualmachineinstancemigrations`;
    const active = activeMigration((await api.get(path)).items, name);
    if (!active) {
      toast(`No migration of ${ns}/${name} to cancel`, true);
      return false;
    }
    await api.del(`${path}/${encodeURIComponent(active.metadata.name)}`);
    toast(`Cancelled the migration of ${ns}/${name}`);
    return true;
  } catch (e) {
    toast(`Cancelling the migration of ${ns}/${name} failed: ${e.message}`, true);
    return false;
  }
}

// A DataSource's readiness from its Ready condition: { ready: true|false|null (unknown), text }.
// Not ready says why (the condition's reason and message), as a user deciding whether VMs can
// clone from it needs to know.
export function dataSourceReadiness(ds) {
  const c = (ds.status?.conditions || []).find((x) => x.type === 'Ready');
  if (!c) return { ready: null, text: 'Unknown: no Ready condition yet' };
  if (c.status === 'True') return { ready: true, text: 'Ready' };
  const why = [c.reason, c.message].filter(Boolean).join(': ');
  return { ready: false, text: `Not ready${why ? ` (${why})` : ''}` };
}
