// Create from an instancetype, a preference and a boot source (DataSource), with an SSH key and
// cloud-init user data. The form writes a VirtualMachine's YAML (shown as it changes, with the
// `virtctl create vm` and `kubectl` commands that do the same); the API validates it on create.
import * as api from '../api.js';
import { h } from '../dom.js';
import { catalog } from './instancetypes.js';

const quote = (s) => `'${String(s).replace(/'/g, "'\\''")}'`;
const indent = (text, n) => text.split('\n').map((l) => (l ? ' '.repeat(n) + l : l)).join('\n');

// The VirtualMachine YAML for the form's values `v`.
export function vmYaml(v) {
  const userData = [v.userData.trim() || '#cloud-config', ...(v.sshKey.trim() && !/ssh_authorized_keys/.test(v.userData)
    ? ['ssh_authorized_keys:', `  - ${v.sshKey.trim()}`] : [])].join('\n');
  const disk = `${v.name}-rootdisk`;
  return `apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: ${v.name}
  namespace: ${v.namespace}
spec:
  runStrategy: ${v.start ? 'Always' : 'Halted'}
  instancetype:
    kind: ${v.instancetype.kind}
    name: ${v.instancetype.name}
${v.preference ? `  preference:
    kind: ${v.preference.kind}
    name: ${v.preference.name}
` : ''}  dataVolumeTemplates:
  - metadata:
      name: ${disk}
    spec:
      sourceRef:
        kind: DataSource
        name: ${v.source.name}
        namespace: ${v.source.namespace}
      storage:
        resources:
          requests:
            storage: ${v.size}
  template:
    spec:
      domain:
        devices:
          disks:
          - name: rootdisk
            disk:
              bus: virtio
          - name: cloudinitdisk
            disk:
              bus: virtio
      volumes:
      - name: rootdisk
        dataVolume:
          name: ${disk}
      - name: cloudinitdisk
        cloudInitNoCloud:
          userData: |
${indent(userData, 12)}
`;
}

// The virtctl and kubectl commands that create the same VM.
export function vmCommands(v) {
  const cluster = (k) => (k.includes('Cluster') ? '' : 'virtualmachineinstancetype/');
  const args = [
    'virtctl create vm', `--name ${v.name}`,
    `--instancetype ${cluster(v.instancetype.kind)}${v.instancetype.name}`,
    v.preference ? `--preference ${v.preference.kind.includes('Cluster') ? '' : 'virtualmachinepreference/'}${v.preference.name}` : '',
    `--volume-import type:ds,src:${v.source.namespace}/${v.source.name},size:${v.size},name:${v.name}-rootdisk`,
    `--cloud-init-user-data "$(base64 -w0 user-data)"`,
    v.start ? '--run-strategy Always' : '--run-strategy Halted',
  ].filter(Boolean);
  return [
    '# user-data holds the cloud-init user data shown in the YAML.',
    `${args.join(' \\\n    ')} \\\n  | kubectl create -n ${v.namespace} -f -`,
    '# or, with the YAML above saved as vm.yaml:',
    `kubectl create -f vm.yaml    # or: virtctl create -f vm.yaml`,
    v.start ? '' : `virtctl start ${v.name} -n ${v.namespace}`,
  ].filter(Boolean).join('\n');
}

// The form. `onYaml(text)` opens the YAML editor with the form's YAML; `onSubmit(text, ns)`
// creates it.
export function wizard(el, onYaml, onSubmit) {
  const name = h('input', { id: 'wiz-name', value: `vm-${Math.random().toString(36).slice(2, 7)}`, required: true, pattern: '[a-z0-9]([-a-z0-9]*[a-z0-9])?' });
  const ns = h('input', { id: 'wiz-namespace', value: 'default' });
  const itSel = h('select', { id: 'wiz-instancetype' });
  const prefSel = h('select', { id: 'wiz-preference' }, h('option', { value: '' }, '(none)'));
  const srcSel = h('select', { id: 'wiz-source' });
  const size = h('input', { id: 'wiz-size', value: '1Gi' });
  const key = h('textarea', { id: 'wiz-ssh-key', placeholder: 'ssh-ed25519 AAAA… user@host', rows: 2 });
  const userData = h('textarea', { id: 'wiz-user-data', rows: 5 });
  userData.value = '#cloud-config\npassword: changeme\nchpasswd: { expire: false }';
  const start = h('input', { type: 'checkbox', id: 'wiz-start', checked: true });
  const yaml = h('pre', { class: 'yaml', id: 'wiz-yaml' });
  const cmd = h('pre', { class: 'cmd', id: 'wiz-command' });
  const note = h('p', { class: 'muted', id: 'wiz-note' });
  const submit = h('button', { class: 'primary', id: 'wiz-submit', type: 'button' }, 'Create');
  const edit = h('button', { type: 'button', id: 'wiz-edit' }, 'Edit as YAML');
  let its = [];
  let prefs = [];
  let sources = [];
  const opt = (x, i) => h('option', { value: String(i) }, x.namespace ? `${x.namespace}/${x.name}` : `${x.name} (cluster)`);
  function values() {
    return {
      name: name.value.trim(), namespace: ns.value.trim() || 'default',
      instancetype: its[parseInt(itSel.value, 10)] || { kind: 'VirtualMachineClusterInstancetype', name: '' },
      preference: prefs[parseInt(prefSel.value, 10)] || null,
      source: sources[parseInt(srcSel.value, 10)] || { name: '', namespace: '' },
      size: size.value.trim() || '1Gi', sshKey: key.value, userData: userData.value, start: start.checked,
    };
  }
  function draw() {
    const v = values();
    yaml.textContent = vmYaml(v);
    cmd.textContent = vmCommands(v);
    submit.disabled = !its.length || !sources.length;
  }
  [name, ns, itSel, prefSel, srcSel, size, key, userData, start].forEach((i) => i.addEventListener('input', draw));
  [itSel, prefSel, srcSel, start].forEach((i) => i.addEventListener('change', draw));
  submit.addEventListener('click', () => onSubmit(yaml.textContent, values().namespace, submit));
  edit.addEventListener('click', () => onYaml(yaml.textContent));
  el.append(
    h('div', { class: 'form card' },
      h('label', { for: 'wiz-name' }, 'Name'), name,
      h('label', { for: 'wiz-namespace' }, 'Namespace'), ns,
      h('label', { for: 'wiz-instancetype' }, 'Instancetype'), itSel,
      h('label', { for: 'wiz-preference' }, 'Preference'), prefSel,
      h('label', { for: 'wiz-source' }, 'Boot source (DataSource)'), srcSel,
      h('label', { for: 'wiz-size' }, 'Root disk size'), size,
      h('label', { for: 'wiz-ssh-key' }, 'SSH public key'), key,
      h('label', { for: 'wiz-user-data' }, 'Cloud-init user data'), userData,
      h('label', { for: 'wiz-start' }, 'Start after creation'), h('span', {}, start),
    ),
    note,
    h('div', { class: 'toolbar', style: 'margin-top:.75rem' }, submit, edit),
    h('h2', {}, 'YAML'), yaml,
    h('h2', {}, 'The same from the command line'), cmd,
  );
  (async () => {
    [its, prefs] = await Promise.all([catalog(false), catalog(true)]);
    try {
      const l = await api.get(`${api.CDI}/datasources`);
      sources = (l.items || []).map((o) => ({ name: o.metadata.name, namespace: o.metadata.namespace }));
    } catch (_) {
      sources = [];
    }
    itSel.replaceChildren(...its.map(opt));
    prefSel.append(...prefs.map(opt));
    srcSel.replaceChildren(...sources.map(opt));
    const missing = [!its.length && 'no instancetype', !sources.length && 'no DataSource'].filter(Boolean);
    note.textContent = missing.length ? `Nothing to create from yet: ${missing.join(' and ')} can be read here (create them from YAML, or see Boot sources).` : '';
    draw();
  })();
  draw();
}
