// Overview: VMs by status, boot sources (DataSources) with their readiness, volumes by phase,
// recent events.
import * as api from '../api.js';
import { h, age, link, status } from '../dom.js';
import { dataSourceReadiness, events, vmKey, vmStatus } from './common.js';

export function overview(main) {
  const counts = h('div', { class: 'cards' });
  const volumes = h('div', { class: 'cards' });
  const sources = h('tbody');
  const evBody = h('tbody');
  main.append(
    h('h1', {}, 'Overview'),
    h('h2', {}, 'Virtual machines'), counts,
    h('h2', {}, 'Boot sources'),
    h('table', { id: 'overview-sources' }, h('thead', {}, h('tr', {}, h('th', {}, 'DataSource'), h('th', {}, 'Source'), h('th', {}, 'Readiness'))), sources),
    h('h2', {}, 'Volumes'), volumes,
    h('h2', {}, 'Recent events'),
    h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Age'), h('th', {}, 'Type'), h('th', {}, 'Reason'), h('th', {}, 'Object'), h('th', {}, 'Message'))), evBody),
  );
  let vms = [];
  let vmis = new Map();
  const draw = () => {
    const by = new Map();
    for (const vm of vms) {
      const s = vmStatus(vm, vmis.get(vmKey(vm)));
      by.set(s, (by.get(s) || 0) + 1);
    }
    counts.replaceChildren(
      h('div', { class: 'card' }, h('div', { class: 'stat' }, String(vms.length)), link('/console/vms', 'All')),
      ...[...by.entries()].sort().map(([s, n]) => h('div', { class: 'card' }, h('div', { class: 'stat' }, String(n)), link(`/console/vms?status=${encodeURIComponent(s)}`, status(s)))),
    );
  };
  const stops = [
    api.follow(`${api.KV}/virtualmachines`, (items) => { vms = items; draw(); }),
    api.follow(`${api.KV}/virtualmachineinstances`, (items) => { vmis = new Map(items.map((i) => [vmKey(i), i])); draw(); }),
    api.follow(`${api.CDI}/datasources`, (items) => {
      items.sort((a, b) => `${a.metadata.namespace}/${a.metadata.name}`.localeCompare(`${b.metadata.namespace}/${b.metadata.name}`));
      sources.replaceChildren(...(items.length ? items.map((ds) => {
        const r = dataSourceReadiness(ds);
        const pvc = ds.spec?.source?.pvc;
        return h('tr', { 'data-object': `${ds.metadata.namespace}/${ds.metadata.name}` },
          h('td', {}, link('/console/bootsources', `${ds.metadata.namespace}/${ds.metadata.name}`)),
          h('td', {}, pvc ? `PVC ${pvc.namespace || ds.metadata.namespace}/${pvc.name}` : '—'),
          h('td', {}, h('span', { class: `status ${r.ready === true ? 'True' : r.ready === false ? 'Failed' : ''}` }, r.text)));
      }) : [h('tr', {}, h('td', { colspan: 3, class: 'muted' }, 'No boot sources yet: import one on the Boot sources page.'))]));
    }, (e) => sources.replaceChildren(h('tr', {}, h('td', { colspan: 3, class: 'error' }, e.message))), 4000),
    api.follow(`${api.CDI}/datavolumes`, (items) => {
      const by = new Map();
      for (const dv of items) by.set(dv.status?.phase || 'Pending', (by.get(dv.status?.phase || 'Pending') || 0) + 1);
      volumes.replaceChildren(
        h('div', { class: 'card' }, h('div', { class: 'stat' }, String(items.length)), link('/console/bootsources', 'DataVolumes')),
        ...[...by.entries()].sort().map(([s, n]) => h('div', { class: 'card' }, h('div', { class: 'stat' }, String(n)), status(s))),
      );
    }, () => volumes.replaceChildren(h('p', { class: 'muted' }, 'No DataVolumes can be listed here.')), 4000),
  ];
  let timer = null;
  const refreshEvents = async () => {
    const list = (await events()).slice(0, 15);
    evBody.replaceChildren(...(list.length ? list.map((e) => h('tr', {},
      h('td', {}, age(e.lastTimestamp || e.firstTimestamp)), h('td', {}, e.type || ''), h('td', {}, e.reason || ''),
      h('td', {}, `${e.involvedObject?.kind || ''} ${e.involvedObject?.namespace || ''}/${e.involvedObject?.name || ''}`),
      h('td', {}, e.message || ''))) : [h('tr', {}, h('td', { colspan: 5, class: 'muted' }, 'No events yet.'))]));
    timer = setTimeout(refreshEvents, 5000);
  };
  refreshEvents();
  return () => { stops.forEach((s) => s()); clearTimeout(timer); };
}
