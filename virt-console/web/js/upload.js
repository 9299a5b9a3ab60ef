// Upload a disk image from the browser: a DataVolume with an `upload` source, a token from an
// UploadTokenRequest, then the file sent to the node's upload endpoint (`/v1beta1/upload`, CDI's
// upload proxy path, served on the page's own origin) with its progress shown.
import * as api from './api.js';
import { h, toast } from './dom.js';

const UPLOAD = '/apis/upload.cdi.kubevirt.io/v1beta1';

// The smallest whole MiB that holds `bytes` (at least 1 MiB), as a Kubernetes quantity.
export function sizeFor(bytes) {
  return `${Math.max(1, Math.ceil(bytes / 1048576))}Mi`;
}

// A token for one upload into DataVolume ns/name: asked again while the DataVolume is not ready
// for uploads yet (the node answers 409 until its volume is prepared).
async function token(ns, name) {
  const body = JSON.stringify({ apiVersion: 'upload.cdi.kubevirt.io/v1beta1', kind: 'UploadTokenRequest', metadata: { name, namespace: ns }, spec: { pvcName: name } });
  for (let i = 0; ; i++) {
    try {
      const r = await api.request('POST', `${UPLOAD}/namespaces/${encodeURIComponent(ns)}/uploadtokenrequests`, { body, contentType: 'application/json' });
      return r.status.token;
    } catch (e) {
      if (i >= 20 || !(e.status === 409 || e.status === 404)) throw e;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

// Sends `file` with `tok`, calling `onProgress(sent, total)`; resolves when the node took it.
function send(file, tok, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', '/v1beta1/upload');
    xhr.setRequestHeader('Authorization', `Bearer ${tok}`);
    xhr.setRequestHeader('Content-Type', 'application/octet-stream');
    xhr.upload.onprogress = (e) => onProgress(e.loaded, e.lengthComputable ? e.total : file.size);
    xhr.onload = () => (xhr.status < 300 ? resolve() : reject(new Error(`the upload endpoint answered ${xhr.status}: ${xhr.responseText.trim()}`)));
    xhr.onerror = () => reject(new Error('the upload was interrupted'));
    xhr.send(file);
  });
}

// The form: namespace, name, size (from the file unless given), the file, and a progress bar.
export function uploadForm(defaultNs) {
  const ns = h('input', { id: 'upload-ns', value: defaultNs || 'default', required: true, 'aria-label': 'Namespace' });
  const name = h('input', { id: 'upload-name', placeholder: 'name', required: true, 'aria-label': 'DataVolume name' });
  const size = h('input', { id: 'upload-size', placeholder: 'size (from the file)', 'aria-label': 'Size' });
  const file = h('input', { id: 'upload-file', type: 'file', required: true, 'aria-label': 'Disk image' });
  const bar = h('progress', { id: 'upload-progress', max: 100, value: 0, hidden: true });
  const state = h('span', { id: 'upload-state', class: 'muted' });
  const submit = h('button', { type: 'submit', id: 'upload-submit' }, 'Upload');
  const form = h('form', { id: 'upload-form', class: 'toolbar' }, ns, name, size, file, submit, bar, state);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = file.files[0];
    if (!f) return;
    submit.disabled = true;
    bar.hidden = false;
    bar.value = 0;
    const [n, dv] = [ns.value.trim(), name.value.trim()];
    try {
      state.textContent = 'Creating the DataVolume…';
      await api.request('POST', `${api.CDI}/namespaces/${encodeURIComponent(n)}/datavolumes`, {
        body: JSON.stringify({ apiVersion: 'cdi.kubevirt.io/v1beta1', kind: 'DataVolume', metadata: { name: dv, namespace: n }, spec: { source: { upload: {} }, storage: { resources: { requests: { storage: size.value.trim() || sizeFor(f.size) } } } } }),
        contentType: 'application/json',
      });
      state.textContent = 'Waiting for the upload to be accepted…';
      const tok = await token(n, dv);
      await send(f, tok, (sent, total) => {
        const pct = total ? (100 * sent) / total : 0;
        bar.value = pct;
        state.textContent = `Uploading ${f.name}: ${pct.toFixed(0)}% of ${(total / 1048576).toFixed(1)} MiB`;
      });
      bar.value = 100;
      state.textContent = `Uploaded ${f.name} into ${n}/${dv}`;
      state.dataset.done = 'true';
      toast(`Uploaded ${f.name} into DataVolume ${n}/${dv}`);
    } catch (e) {
      state.textContent = `Upload failed: ${e.message}`;
      toast(`Upload into ${n}/${dv} failed: ${e.message}`, true);
    } finally {
      submit.disabled = false;
    }
  });
  return h('div', {}, h('h2', {}, 'Upload an image'), form);
}
