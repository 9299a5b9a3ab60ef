// VM details: status and conditions, YAML, configuration (disks, NICs), events, and the serial and
// VNC consoles. The VM and its VMI are followed live; the tab is kept in the URL.
import * as api from '../api.js';
import { h, age, link, status, confirmAction, navigate, toast } from '../dom.js';
import { toYaml } from '../yaml.js';
import { actionsFor, cancelMigration, events, liveMigratable, migrate, migrating, migrationSummary, power, vmStatus, vmiAddress } from './common.js';
import { serialConsole } from '../serial.js';
import { vncConsole } from '../vnc.js';
import { editor, showProblems } from './create.js';
import { charts } from '../charts.js';

const TABS = [['overview', 'Overview'], ['yaml', 'YAML'], ['config', 'Configuration'], ['events', 'Events'], ['serial', 'Serial console'], ['vnc', 'VNC console']];

// The VMI's last live migration (status.migrationState), or why it cannot move.
function migrationPart(vmi) {
  const rows = migrationSummary(vmi);
  const movable = liveMigratable(vmi);
  if (!rows.length && movable.can) return [];
  const out = [h('h2', {}, 'Live migration')];
  if (!movable.can) out.push(h('p', { class: 'muted', id: 'vm-not-migratable' }, `Cannot be live-migrated: ${movable.why}`));
  if (rows.length) out.push(h('div', { class: 'card', id: 'vm-migration' }, h('dl', { class: 'props' }, ...rows.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]))));
  return out;
}

export function vmDetails(main, query, ns, name) {
  const tab = TABS.some(([t]) => t === query.get('tab')) ? query.get('tab') : 'overview';
  const base = `/console/vms/${encodeURIComponent(ns)}/${encodeURIComponent(name)}`;
  const title = h('span', { class: 'vm-status', id: 'vm-status' });
  const actions = h('span', { class: 'actions' });
  const body = h('div', { id: 'tab-body' });
  main.append(
    h('p', {}, link('/console/vms', 'VirtualMachines'), ' › ', ns),
    h('div', { class: 'toolbar' }, h('h1', { style: 'margin:0' }, name), title, h('span', { class: 'spacer' }), actions),
    h('nav', { class: 'tabs' }, ...TABS.map(([t, label]) => link(`${base}?tab=${t}`, label))),
    body,
  );
  main.querySelectorAll('.tabs a').forEach((a) => a.classList.toggle('active', a.getAttribute('href').endsWith(`tab=${tab}`)));
  let vm = null;
  let vmi = null;
  const stops = [];
  let drawTab = () => {};
  const drawHead = () => {
    if (!vm) return;
    const s = vmStatus(vm, vmi);
    const movable = liveMigratable(vmi);
    const moving = migrating(vmi);
    const key = `${s}|${movable.can}|${movable.why}|${moving}`;
    if (title.dataset.s !== key) {
      title.dataset.s = key;
      title.replaceChildren(status(moving ? 'Migrating' : s));
      // Migrate is offered on a running VM; one that cannot move says why instead of failing later.
      const move = [];
      if (moving) move.push(h('button', { id: 'vm-migrate-cancel', onclick: () => cancelMigration(ns, name) }, 'Cancel migration'));
      else if (s === 'Running' && movable.can) move.push(h('button', { id: 'vm-migrate', onclick: () => migrate(ns, name) }, 'Migrate'));
      else if (s === 'Running') move.push(h('button', { id: 'vm-migrate', disabled: true, title: movable.why }, 'Migrate'));
      actions.replaceChildren(...actionsFor(s).map(([label, verb, target]) => h('button', { class: verb === 'stop' ? 'danger' : '', onclick: () => power(ns, name, label, verb, target) }, label)),
        ...move, h('button', { class: 'danger', onclick: remove }, 'Delete'));
    }
  };
  async function remove() {
    if (!(await confirmAction(`Delete virtual machine ${ns}/${name}? Its disks created for it go too.`, 'Delete'))) return;
    try {
      await api.del(`${api.KV}/namespaces/${encodeURIComponent(ns)}/virtualmachines/${encodeURIComponent(name)}`);
      toast(`Deleted ${ns}/${name}`);
      navigate('/console/vms');
    } catch (e) {
      toast(`Deleting ${ns}/${name} failed: ${e.message}`, true);
    }
  }
  const vmPath = `${api.KV}/namespaces/${encodeURIComponent(ns)}/virtualmachines`;
  const vmiPath = `${api.KV}/namespaces/${encodeURIComponent(ns)}/virtualmachineinstances`;
  stops.push(api.follow(vmPath, (items) => {
    vm = items.find((o) => o.metadata.name === name) || null;
    if (!vm) body.replaceChildren(h('p', { class: 'error' }, `No virtual machine ${ns}/${name}.`));
    drawHead();
    drawTab();
  }));
  stops.push(api.follow(vmiPath, (items) => {
    vmi = items.find((o) => o.metadata.name === name) || null;
    drawHead();
    drawTab();
  }));

  if (tab === 'overview') {
    const info = h('div');
    const chartBox = h('div', { id: 'vm-charts' });
    body.append(info, h('h2', {}, 'Utilization'), chartBox);
    stops.push(charts(chartBox, ns, name));
    drawTab = () => {
      if (!vm) return;
      const conds = [...(vm.status?.conditions || []).map((c) => ['VirtualMachine', c]), ...(vmi?.status?.conditions || []).map((c) => ['VirtualMachineInstance', c])];
      const ifaces = vmi?.status?.interfaces || [];
      info.replaceChildren(
        h('div', { class: 'card' }, h('dl', { class: 'props' },
          h('dt', {}, 'Status'), h('dd', {}, status(vmStatus(vm, vmi))),
          h('dt', {}, 'Namespace'), h('dd', {}, ns),
          h('dt', {}, 'Created'), h('dd', { title: vm.metadata.creationTimestamp || '' }, `${age(vm.metadata.creationTimestamp)} ago`),
          h('dt', {}, 'Run strategy'), h('dd', {}, vm.spec?.runStrategy || (vm.spec?.running ? 'Always' : 'Halted')),
          h('dt', {}, 'Node'), h('dd', {}, vmi?.status?.nodeName || '—'),
          h('dt', {}, 'Phase'), h('dd', {}, vmi?.status?.phase || 'no instance'),
          h('dt', {}, 'IP address'), h('dd', {}, vmiAddress(vmi) || '—'),
          h('dt', {}, 'Guest OS'), h('dd', {}, vmi?.status?.guestOSInfo?.prettyName || vmi?.status?.guestOSInfo?.name || 'not reported (no guest agent)'),
        )),
        h('h2', {}, 'Conditions'),
        h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Of'), h('th', {}, 'Type'), h('th', {}, 'Status'), h('th', {}, 'Reason'), h('th', {}, 'Message'))),
          h('tbody', {}, conds.length ? conds.map(([of, c]) => h('tr', {}, h('td', {}, of), h('td', {}, c.type), h('td', {}, status(c.status)), h('td', {}, c.reason || ''), h('td', {}, c.message || '')))
            : h('tr', {}, h('td', { colspan: 5, class: 'muted' }, 'No conditions.')))),
        ...migrationPart(vmi),
        h('h2', {}, 'Interfaces'),
        h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'IP addresses'), h('th', {}, 'MAC'))),
          h('tbody', {}, ifaces.length ? ifaces.map((i) => h('tr', {}, h('td', {}, i.name || ''), h('td', {}, (i.ipAddresses || [i.ipAddress]).filter(Boolean).join(', ')), h('td', {}, i.mac || '')))
            : h('tr', {}, h('td', { colspan: 3, class: 'muted' }, vmi ? 'No interfaces reported.' : 'The VM is not running.')))),
      );
    };
  } else if (tab === 'yaml') {
    // Edited in place and saved with PUT: the API validates, and a refusal is shown at its field
    // path (the line is marked). The text is not overwritten while it is being edited.
    const errors = h('div', { id: 'yaml-errors', role: 'alert' });
    const note = h('span', { class: 'muted', id: 'yaml-note' });
    const save = h('button', { class: 'primary', id: 'yaml-save' }, 'Save');
    const reload = h('button', { id: 'yaml-reload' }, 'Reload');
    let ed = null;
    let dirty = false;
    const fill = () => {
      if (!vm) return;
      if (!ed) {
        ed = editor(toYaml(vm), () => { dirty = true; note.textContent = 'Edited: Save to apply.'; });
        ed.area.id = 'vm-yaml';
        body.append(h('div', { class: 'toolbar' }, save, reload, note), errors, ed.el);
      } else if (!dirty) {
        ed.area.value = toYaml(vm);
        ed.mark([]);
      }
    };
    reload.addEventListener('click', () => { dirty = false; errors.replaceChildren(); note.textContent = ''; fill(); });
    save.addEventListener('click', async () => {
      errors.replaceChildren();
      save.disabled = true;
      try {
        await api.request('PUT', `${vmPath}/${encodeURIComponent(name)}`, { body: ed.area.value, contentType: 'application/yaml' });
        dirty = false;
        note.textContent = 'Saved.';
        toast(`Saved ${ns}/${name}`);
      } catch (e) {
        showProblems(errors, ed, e);
      } finally {
        save.disabled = false;
      }
    });
    drawTab = fill;
  } else if (tab === 'config') {
    drawTab = () => {
      if (!vm) return;
      const spec = vm.spec?.template?.spec || {};
      const vols = new Map((spec.volumes || []).map((v) => [v.name, v]));
      const source = (v) => {
        if (!v) return '—';
        const k = Object.keys(v).find((x) => x !== 'name');
        const s = v[k] || {};
        return `${k}: ${s.image || s.claimName || s.name || s.path || ''}`.trim();
      };
      const disks = spec.domain?.devices?.disks || [];
      const nics = spec.domain?.devices?.interfaces || [];
      const nets = new Map((spec.networks || []).map((n) => [n.name, n]));
      body.replaceChildren(
        h('h2', {}, 'Disks'),
        h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'Type'), h('th', {}, 'Bus'), h('th', {}, 'Source'))),
          h('tbody', {}, disks.length ? disks.map((d) => {
            const type = ['disk', 'cdrom', 'lun'].find((t) => d[t]) || 'disk';
            return h('tr', {}, h('td', {}, d.name), h('td', {}, type), h('td', {}, (d[type] || {}).bus || ''), h('td', {}, source(vols.get(d.name))));
          }) : h('tr', {}, h('td', { colspan: 4, class: 'muted' }, 'No disks.')))),
        h('h2', {}, 'Network interfaces'),
        h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'Binding'), h('th', {}, 'Model'), h('th', {}, 'Network'))),
          h('tbody', {}, nics.length ? nics.map((n) => h('tr', {}, h('td', {}, n.name), h('td', {}, Object.keys(n).find((k) => ['masquerade', 'bridge', 'sriov', 'passt', 'binding'].includes(k)) || ''), h('td', {}, n.model || 'virtio'),
            h('td', {}, Object.keys(nets.get(n.name) || {}).filter((k) => k !== 'name').join(', '))))
            : h('tr', {}, h('td', { colspan: 4, class: 'muted' }, 'No network interfaces.')))),
        h('h2', {}, 'Resources'),
        h('dl', { class: 'props' }, h('dt', {}, 'Memory'), h('dd', {}, spec.domain?.memory?.guest || spec.domain?.resources?.requests?.memory || '—'),
          h('dt', {}, 'CPU'), h('dd', {}, spec.domain?.cpu ? `${spec.domain.cpu.sockets || 1} socket(s), ${spec.domain.cpu.cores || 1} core(s), ${spec.domain.cpu.threads || 1} thread(s)` : '1 vCPU'),
          h('dt', {}, 'Instance type'), h('dd', {}, vm.spec?.instancetype?.name || '—'),
          h('dt', {}, 'Preference'), h('dd', {}, vm.spec?.preference?.name || '—')),
      );
    };
  } else if (tab === 'events') {
    const tbody = h('tbody');
    body.append(h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Age'), h('th', {}, 'Type'), h('th', {}, 'Reason'), h('th', {}, 'Message'))), tbody));
    let timer = null;
    const refresh = async () => {
      const list = (await events(ns)).filter((e) => e.involvedObject?.name === name);
      tbody.replaceChildren(...(list.length ? list.map((e) => h('tr', {}, h('td', {}, age(e.lastTimestamp || e.firstTimestamp)), h('td', {}, e.type || ''), h('td', {}, e.reason || ''), h('td', {}, e.message || '')))
        : [h('tr', {}, h('td', { colspan: 4, class: 'muted' }, 'No events.'))]));
      timer = setTimeout(refresh, 4000);
    };
    refresh();
    stops.push(() => clearTimeout(timer));
  } else if (tab === 'serial') {
    stops.push(serialConsole(body, ns, name, () => vmi));
  } else if (tab === 'vnc') {
    stops.push(vncConsole(body, ns, name, () => vmi));
  }
  return () => stops.forEach((s) => s());
}
