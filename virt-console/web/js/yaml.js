// Just enough YAML for the console: objects shown as YAML, and a field path
// (`spec.template.spec.domain.devices.disks[0].bus`) found at its line in a document.

const plain = /^[A-Za-z0-9_./-][A-Za-z0-9_. /:@-]*$/;
const special = /^(true|false|null|yes|no|on|off|~|-?[0-9][0-9._e+-]*)$/i;

function scalar(v) {
  if (v === null || v === undefined) return 'null';
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  const s = String(v);
  if (s.includes('\n')) return null;
  if (s === '' || !plain.test(s) || special.test(s) || s.endsWith(':') || s.includes(': ') || s.includes(' #')) return JSON.stringify(s);
  return s;
}

export function toYaml(v, indent = '') {
  if (Array.isArray(v)) {
    if (!v.length) return '[]';
    return v.map((item) => {
      if (item && typeof item === 'object' && !Array.isArray(item) && Object.keys(item).length) {
        const body = toYaml(item, indent + '  ');
        return `${indent}- ${body.slice(indent.length + 2)}`;
      }
      return `${indent}- ${inline(item, indent + '  ')}`;
    }).join('\n');
  }
  if (v && typeof v === 'object') {
    const keys = Object.keys(v);
    if (!keys.length) return '{}';
    return keys.map((k) => {
      const val = v[k];
      const key = scalar(k);
      if (val && typeof val === 'object' && (Array.isArray(val) ? val.length : Object.keys(val).length)) {
        const child = Array.isArray(val) ? toYaml(val, indent) : toYaml(val, indent + '  ');
        return `${indent}${key}:\n${child}`;
      }
      return `${indent}${key}: ${inline(val, indent + '  ')}`;
    }).join('\n');
  }
  return inline(v, indent);
}

function inline(v, indent) {
  if (Array.isArray(v)) return '[]';
  if (v && typeof v === 'object') return '{}';
  const s = scalar(v);
  if (s !== null) return s;
  return '|\n' + String(v).replace(/\n$/, '').split('\n').map((l) => indent + l).join('\n');
}

// Every field path of a YAML document (`spec.domain.devices.disks[0].bus`) with its 1-based line.
export function pathLines(text) {
  const lines = new Map();
  const stack = [{ col: -1, path: '', kind: 'root', items: 0 }];
  const join = (base, key) => (base ? `${base}.${key}` : key);
  text.split('\n').forEach((raw, i) => {
    if (!raw.trim() || raw.trim().startsWith('#') || raw.trim() === '---') return;
    let col = raw.length - raw.trimStart().length;
    let rest = raw.trimStart();
    while (rest.startsWith('- ') || rest === '-') {
      while (stack.length > 1 && (stack[stack.length - 1].col > col || (stack[stack.length - 1].col === col && stack[stack.length - 1].kind === 'item'))) stack.pop();
      const parent = stack[stack.length - 1];
      const path = `${parent.path}[${parent.items++}]`;
      if (!lines.has(path)) lines.set(path, i + 1);
      stack.push({ col, path, kind: 'item', items: 0 });
      const after = rest.slice(1);
      col += 1 + (after.length - after.trimStart().length);
      rest = after.trimStart();
    }
    const m = rest.match(/^("?)([^":]+)\1:(\s|$)/);
    if (!m) return;
    while (stack.length > 1 && stack[stack.length - 1].col >= col) stack.pop();
    const path = join(stack[stack.length - 1].path, m[2].trim());
    if (!lines.has(path)) lines.set(path, i + 1);
    stack.push({ col, path, kind: 'key', items: 0 });
  });
  return lines;
}

// The 1-based line of `path` in `text`, or of its deepest ancestor found; 0 when nothing matches.
export function lineOf(text, path) {
  const lines = pathLines(text);
  let p = path;
  while (p) {
    if (lines.has(p)) return lines.get(p);
    const cut = Math.max(p.lastIndexOf('.'), p.lastIndexOf('['));
    if (cut <= 0) break;
    p = p.slice(0, cut);
  }
  return lines.get(p) || 0;
}

// Field paths named in an API error: its Status causes, else `a.b[0].c:` at the start of the
// message or of any `; `-separated part.
export function fieldPaths(err) {
  const out = [];
  for (const c of err.causes || []) if (c.field) out.push({ path: c.field, message: c.message || err.message });
  if (out.length) return out;
  const re = /(?:^|[;\n]\s*|: )((?:[A-Za-z_][\w-]*)(?:\[\d+\])*(?:\.(?:[A-Za-z_][\w-]*)(?:\[\d+\])*)+)(?=:|\s|$)/g;
  for (const m of err.message.matchAll(re)) {
    if (!out.some((o) => o.path === m[1])) out.push({ path: m[1], message: err.message });
  }
  return out;
}
