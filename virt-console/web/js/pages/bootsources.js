// Boot sources: DataVolumes with phase and import progress, DataSources and DataImportCrons.
import * as api from '../api.js';
import { h, age, status } from '../dom.js';

function progress(p) {
  const n = parseFloat(p);
  if (Number.isNaN(n)) return h('span', { class: 'muted' }, p || '—');
  return h('span', {}, h('span', { class: 'progress' }, h('span', { style: `width:${Math.min(100, n)}%` })), `${n.toFixed(1)}%`);
}

function source(spec) {
  const s = spec?.source || spec?.template?.spec?.source || {};
  const k = Object.keys(s)[0];
  if (!k) return '—';
  const v = s[k] || {};
  return `${k}: ${v.url || v.name || (v.namespace ? `${v.namespace}/${v.name}` : '')}`;
}

function section(main, title, path, columns, cells, empty) {
  const body = h('tbody');
  main.append(h('h2', {}, title), h('table', {}, h('thead', {}, h('tr', {}, ...columns.map((c) => h('th', {}, c)))), body));
  return api.follow(path, (items) => {
    items.sort((a, b) => `${a.metadata.namespace}/${a.metadata.name}`.localeCompare(`${b.metadata.namespace}/${b.metadata.name}`));
    body.replaceChildren(...(items.length ? items.map((o) => h('tr', { 'data-object': `${o.metadata.namespace}/${o.metadata.name}` }, ...cells(o).map((c) => h('td', {}, c))))
      : [h('tr', {}, h('td', { colspan: columns.length, class: 'muted' }, empty))]));
  }, (e) => body.replaceChildren(h('tr', {}, h('td', { colspan: columns.length, class: 'error' }, e.message))), 2000);
}

export function bootSources(main) {
  main.append(h('h1', {}, 'Boot sources'));
  const ready = (o) => (o.status?.conditions || []).find((c) => c.type === 'Ready');
  return [
    section(main, 'DataSources', `${api.CDI}/datasources`, ['Name', 'Namespace', 'Source', 'Ready', 'Age'],
      (o) => [o.metadata.name, o.metadata.namespace, source(o.spec), status(ready(o)?.status || 'Unknown'), age(o.metadata.creationTimestamp)],
      'No DataSources.'),
    section(main, 'DataImportCrons', `${api.CDI}/dataimportcrons`, ['Name', 'Namespace', 'Schedule', 'Managed DataSource', 'Current import', 'Last import'],
      (o) => [o.metadata.name, o.metadata.namespace, o.spec?.schedule || '—', o.spec?.managedDataSource || '—',
        (o.status?.currentImports || []).map((c) => c.DataVolumeName || c.dataVolumeName).join(', ') || '—', o.status?.lastImportTimestamp ? `${age(o.status.lastImportTimestamp)} ago` : '—'],
      'No DataImportCrons.'),
    section(main, 'DataVolumes', `${api.CDI}/datavolumes`, ['Name', 'Namespace', 'Source', 'Phase', 'Progress', 'Age'],
      (o) => [o.metadata.name, o.metadata.namespace, source(o.spec), status(o.status?.phase || 'Pending'), progress(o.status?.progress), age(o.metadata.creationTimestamp)],
      'No DataVolumes.'),
  ].reduce((acc, stop) => () => { acc(); stop(); }, () => {});
}
