// Boot sources: DataVolumes with phase and import progress, DataSources and DataImportCrons
// (current version, import under way with its progress, the automatic-update switch), and the
// upload of a disk image from the browser (upload.js).
import * as api from '../api.js';
import { h, age, confirmAction, status, toast } from '../dom.js';
import { uploadForm } from '../upload.js';

// HCO's per-boot-source switch, honoured by the node's DataImportCron controller.
export const AUTO_UPDATE = 'dataimportcrontemplate.kubevirt.io/enable';
const dvs = new Map();

// Turns automatic updates of `cron` on or off: its annotation, written with PUT (the API keeps the
// spec; a stale resourceVersion is refused and the switch shows the current state again).
async function setAutoUpdate(ns, name, on) {
  const path = `${api.CDI}/namespaces/${encodeURIComponent(ns)}/dataimportcrons/${encodeURIComponent(name)}`;
  const cron = await api.get(path);
  cron.metadata.annotations = { ...(cron.metadata.annotations || {}) };
  if (on) delete cron.metadata.annotations[AUTO_UPDATE];
  else cron.metadata.annotations[AUTO_UPDATE] = 'false';
  return api.request('PUT', path, { body: JSON.stringify(cron), contentType: 'application/json' });
}

function autoSwitch(o) {
  const ns = o.metadata.namespace;
  const name = o.metadata.name;
  const on = (o.metadata.annotations || {})[AUTO_UPDATE] !== 'false';
  const box = h('input', { type: 'checkbox', role: 'switch', 'data-auto-update': `${ns}/${name}`, 'aria-label': `Automatic updates of ${ns}/${name}` });
  box.checked = on;
  box.addEventListener('change', async () => {
    const want = box.checked;
    if (!want && !(await confirmAction(`Turn off automatic updates of boot source ${ns}/${name}? It keeps its current version and stops polling.`, 'Turn off'))) {
      box.checked = true;
      return;
    }
    box.disabled = true;
    try {
      await setAutoUpdate(ns, name, want);
      toast(`Automatic updates of ${ns}/${name} ${want ? 'on' : 'off'}`);
    } catch (e) {
      box.checked = !want;
      toast(`Switching automatic updates of ${ns}/${name} failed: ${e.message}`, true);
    } finally {
      box.disabled = false;
    }
  });
  return h('label', { class: 'switch' }, box, on ? 'On' : 'Off');
}

function currentImport(o) {
  const imports = o.status?.currentImports || [];
  if (!imports.length) return '—';
  return h('span', {}, ...imports.map((c) => {
    const dvName = c.DataVolumeName || c.dataVolumeName;
    const dv = dvs.get(`${o.metadata.namespace}/${dvName}`);
    return h('div', {}, `${dvName} `, dv ? status(dv.status?.phase || 'Pending') : '', dv && dv.status?.phase !== 'Succeeded' ? progress(dv.status?.progress) : '');
  }));
}

function version(o) {
  const imports = o.status?.currentImports || [];
  const digest = imports.length ? (imports[imports.length - 1].Digest || '') : '';
  const pvc = o.status?.lastImportedPVC?.name;
  return h('span', { title: digest }, pvc || '—', digest ? h('div', { class: 'muted' }, digest.replace(/^sha256:/, '').slice(0, 12)) : '');
}

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
    section(main, 'DataImportCrons', `${api.CDI}/dataimportcrons`, ['Name', 'Namespace', 'Schedule', 'Managed DataSource', 'Current version', 'Import', 'Last import', 'Automatic updates'],
      (o) => [o.metadata.name, o.metadata.namespace, o.spec?.schedule || '—', o.spec?.managedDataSource || '—', version(o),
        currentImport(o), o.status?.lastImportTimestamp ? `${age(o.status.lastImportTimestamp)} ago` : '—', autoSwitch(o)],
      'No DataImportCrons.'),
    section(main, 'DataVolumes', `${api.CDI}/datavolumes`, ['Name', 'Namespace', 'Source', 'Phase', 'Progress', 'Age'],
      (o) => [(dvs.set(`${o.metadata.namespace}/${o.metadata.name}`, o), o.metadata.name), o.metadata.namespace, source(o.spec), status(o.status?.phase || 'Pending'), progress(o.status?.progress), age(o.metadata.creationTimestamp)],
      'No DataVolumes.'),
    (main.append(uploadForm()), () => {}),
  ].reduce((acc, stop) => () => { acc(); stop(); }, () => {});
}
