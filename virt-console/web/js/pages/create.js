// Create from YAML: the API validates; its errors are shown at their field path (the line is
// marked in the editor); the virtctl and kubectl commands that do the same are shown.
import * as api from '../api.js';
import { h, navigate, toast } from '../dom.js';
import { fieldPaths, lineOf } from '../yaml.js';
import { wizard } from './wizard.js';

const EXAMPLE = `apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: example
  namespace: default
spec:
  runStrategy: Halted
  template:
    spec:
      domain:
        devices:
          disks:
          - name: rootdisk
            disk:
              bus: virtio
        memory:
          guest: 512Mi
      volumes:
      - name: rootdisk
        containerDisk:
          image: quay.io/containerdisks/fedora:latest
`;

const PLURALS = {
  VirtualMachine: [api.KV, 'virtualmachines'],
  VirtualMachineInstance: [api.KV, 'virtualmachineinstances'],
  DataVolume: [api.CDI, 'datavolumes'],
  DataSource: [api.CDI, 'datasources'],
  DataImportCron: [api.CDI, 'dataimportcrons'],
};

// The kind, name and namespace written at the top level and under `metadata:`.
function head(text) {
  const out = {};
  let inMeta = false;
  for (const line of text.split('\n')) {
    const top = line.match(/^(\w+):\s*(.*)$/);
    if (top) {
      inMeta = top[1] === 'metadata';
      if (top[1] === 'kind') out.kind = top[2].replace(/["']/g, '').trim();
      continue;
    }
    const m = inMeta && line.match(/^\s{2}(name|namespace):\s*(.+)$/);
    if (m) out[m[1]] = m[2].replace(/["']/g, '').trim();
  }
  return out;
}

export function editor(text, onInput) {
  const gutter = h('div', { class: 'gutter', 'aria-hidden': 'true' });
  const area = h('textarea', { spellcheck: 'false', 'aria-label': 'YAML', id: 'yaml-editor' });
  area.value = text;
  const bad = new Set();
  const paint = () => {
    const n = area.value.split('\n').length;
    area.rows = n + 1;
    gutter.replaceChildren(...Array.from({ length: n }, (_, i) => h('div', { class: bad.has(i + 1) ? 'bad' : '', 'data-line': i + 1 }, String(i + 1))));
  };
  area.addEventListener('input', () => { bad.clear(); paint(); if (onInput) onInput(); });
  paint();
  const el = h('div', { class: 'editor' }, gutter, area);
  return {
    el, area,
    mark(lines) { bad.clear(); lines.forEach((l) => bad.add(l)); paint(); },
  };
}

// Shows `err` (an ApiError) in `box`: each field path with its line in `ed`'s text.
export function showProblems(box, ed, err) {
  const paths = fieldPaths(err);
  const lines = [];
  const items = paths.map((p) => {
    const line = lineOf(ed.area.value, p.path);
    if (line) lines.push(line);
    return h('li', { class: 'problem', 'data-field': p.path },
      h('code', {}, p.path), line ? ` (line ${line})` : '', ': ', p.message.replace(/^document \d+: /, '').replace(`${p.path}: `, ''));
  });
  if (!items.length) items.push(h('li', { class: 'problem' }, err.message));
  ed.mark(lines);
  box.replaceChildren(h('h2', {}, `The API refused it (${err.status} ${err.reason || ''})`), h('ul', { class: 'problems' }, items));
}

// `?mode=yaml` the YAML editor, else the form (instancetype, preference, boot source).
export function create(main, query) {
  const mode = query.get('mode') === 'yaml' ? 'yaml' : 'form';
  const tabs = h('nav', { class: 'tabs' },
    h('a', { href: '/console/create', class: mode === 'form' ? 'active' : '', id: 'create-form-tab', onclick: (e) => { e.preventDefault(); navigate('/console/create'); } }, 'From an instancetype'),
    h('a', { href: '/console/create?mode=yaml', class: mode === 'yaml' ? 'active' : '', id: 'create-yaml-tab', onclick: (e) => { e.preventDefault(); navigate('/console/create?mode=yaml'); } }, 'From YAML'));
  if (mode === 'form') {
    const errors = h('div', { id: 'create-errors', role: 'alert' });
    main.append(h('h1', {}, 'Create a virtual machine'), tabs);
    wizard(main, (text) => { pending = text; navigate('/console/create?mode=yaml'); }, async (text, namespace, button) => {
      button.disabled = true;
      errors.replaceChildren();
      try {
        const vm = await api.request('POST', `${api.KV}/namespaces/${encodeURIComponent(namespace)}/virtualmachines`, { body: text, contentType: 'application/yaml' });
        toast(`VirtualMachine ${namespace}/${vm.metadata.name} created`);
        navigate(`/console/vms/${encodeURIComponent(namespace)}/${encodeURIComponent(vm.metadata.name)}`);
      } catch (e) {
        const ed = editor(text);
        showProblems(errors, ed, e);
        errors.append(ed.el);
      } finally {
        button.disabled = false;
      }
    });
    main.append(errors);
    return undefined;
  }
  main.append(tabs);
  return yamlCreate(main, query);
}

// Text handed from the form to the YAML editor ("Edit as YAML").
let pending = null;

function yamlCreate(main, query) {
  const errors = h('div', { id: 'create-errors', role: 'alert' });
  const cmd = h('pre', { class: 'cmd', id: 'create-command' });
  const ed = editor(pending || EXAMPLE, () => commands());
  pending = null;
  function commands() {
    const { kind = 'VirtualMachine', name = '' } = head(ed.area.value);
    const server = location.origin;
    cmd.textContent = [
      `# Save the YAML as ${name || 'vm'}.yaml, then:`,
      `virtctl --server ${server} create -f ${name || 'vm'}.yaml`,
      `kubectl --server ${server} --token "$TOKEN" create -f ${name || 'vm'}.yaml`,
      kind === 'VirtualMachine' && name ? `virtctl --server ${server} start ${name}` : '',
    ].filter(Boolean).join('\n');
  }
  commands();
  const submit = h('button', { class: 'primary', id: 'create-submit' }, 'Create');
  submit.addEventListener('click', async () => {
    errors.replaceChildren();
    const { kind, name, namespace = 'default' } = head(ed.area.value);
    const target = PLURALS[kind];
    if (!target) {
      errors.replaceChildren(h('p', { class: 'error' }, `kind: ${kind || '(missing)'} cannot be created here; use one of ${Object.keys(PLURALS).join(', ')}.`));
      return;
    }
    submit.disabled = true;
    try {
      await api.request('POST', `${target[0]}/namespaces/${encodeURIComponent(namespace)}/${target[1]}`, { body: ed.area.value, contentType: 'application/yaml' });
      toast(`${kind} ${namespace}/${name} created`);
      navigate(kind === 'VirtualMachine' ? `/console/vms/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}` : kind === 'VirtualMachineInstance' ? '/console/vms' : '/console/bootsources');
    } catch (e) {
      showProblems(errors, ed, e);
    } finally {
      submit.disabled = false;
    }
  });
  main.append(
    h('h1', {}, 'Create from YAML'),
    h('p', { class: 'muted' }, 'A VirtualMachine, VirtualMachineInstance, DataVolume, DataSource or DataImportCron. The node validates it; problems are shown at their field.'),
    ed.el,
    h('div', { class: 'toolbar', style: 'margin-top:.75rem' }, submit),
    errors,
    h('h2', {}, 'The same from the command line'),
    cmd,
  );
  void query;
}
