// Drives the web console in Debian's chromium with playwright-core (run by tests/web_console.rs).
// Env: PLAYWRIGHT_CORE (module path), BASE (http://127.0.0.1:port), TOKEN, VM_NAME, VM_YAML,
// BAD_YAML, BAD_FIELD, BAD_LINE, SHOTS (screenshot directory), PROFILE (a new user-data-dir),
// BOOT_MARKER (text the guest prints on its serial console), CRON_IMAGE (a registry image for a
// DataImportCron), BULK (how many VMs the list is measured with), COMPLIANCE_FAIL (how many rules
// the node's compliance scan failed), COMPLIANCE_REMEDIATION (text of the hostDisk rule's fix).
const { chromium } = require(process.env.PLAYWRIGHT_CORE);
const env = (k) => {
  if (!process.env[k]) throw new Error(`${k} is not set`);
  return process.env[k];
};

function step(name) {
  console.log(`step: ${name} (${((Date.now() - t0) / 1000).toFixed(1)}s)`);
}
const t0 = Date.now();

// A request to the API from the page, with the page's token; returns [status, body].
function apiCall(page, method, path, body) {
  return page.evaluate(async ([m, p, b]) => {
    const t = sessionStorage.getItem('virt-console-token');
    const r = await fetch(p, { method: m, headers: { Authorization: `Bearer ${t}`, 'Content-Type': 'application/json', Accept: 'application/json' }, body: b ? JSON.stringify(b) : undefined });
    const text = await r.text();
    let json = null;
    try { json = JSON.parse(text); } catch (_) { json = text; }
    return [r.status, json];
  }, [method, path, body || null]);
}

async function must(page, method, path, body) {
  const [code, out] = await apiCall(page, method, path, body);
  if (code >= 300) throw new Error(`${method} ${path}: ${code} ${JSON.stringify(out)}`);
  return out;
}

// Runs `fn(i)` for i in 0..n, `width` at a time.
async function pool(n, width, fn) {
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => { for (let i = next++; i < n; i = next++) await fn(i); }));
}

(async () => {
  const ctx = await chromium.launchPersistentContext(env('PROFILE'), {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      `--ignore-certificate-errors-spki-list=${env('SPKI')}`],
    viewport: { width: 1280, height: 900 },
  });
  const page = ctx.pages()[0] || (await ctx.newPage());
  const errors = [];
  page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
  // Refusals the test provokes (401 for the wrong token, 422 for the bad YAML) are logged by the
  // browser as failed loads; anything else is an error of the page.
  page.on('console', (m) => {
    if (m.type() === 'error' && !/Failed to load resource: .*status of 4(01|22)/.test(m.text())) errors.push(`console: ${m.text()}`);
  });
  page.setDefaultTimeout(30000);
  const shot = (n) => page.screenshot({ path: `${env('SHOTS')}/${n}.png`, fullPage: true });
  const name = env('VM_NAME');
  try {
    step('login');
    await page.goto(`${env('BASE')}/`);
    await page.waitForURL('**/console/');
    await page.locator('#login-token').waitFor({ state: 'visible' });
    await shot('login');
    await page.fill('#login-token', 'not-the-token');
    await page.click('#login-form button[type=submit]');
    await page.locator('#login-error', { hasText: 'refused' }).waitFor();
    await page.fill('#login-token', env('TOKEN'));
    await page.click('#login-form button[type=submit]');
    await page.locator('#nav').waitFor({ state: 'visible' });
    await page.locator('h1', { hasText: 'Overview' }).waitFor();
    await shot('overview');

    const IT = '/apis/instancetype.kubevirt.io/v1beta1';
    const CDI = '/apis/cdi.kubevirt.io/v1beta1';
    const KV = '/apis/kubevirt.io/v1';
    const bulkN = parseInt(env('BULK'), 10);
    step(`a list of ${bulkN} VMs: first paint, filter, paging, bulk confirmation`);
    const vmTemplate = (n) => ({ apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachine', metadata: { name: n, namespace: 'default' },
      spec: { runStrategy: 'Halted', template: { spec: { domain: { devices: {}, memory: { guest: '64Mi' }, firmware: { kernelBoot: { container: { image: env('CRON_IMAGE').replace('docker://', ''), kernelPath: '/boot/vmlinuz', initrdPath: '/boot/initrd.img' } } } } } } } });
    await pool(bulkN, 8, (i) => must(page, 'POST', `${KV}/namespaces/default/virtualmachines`, vmTemplate(`bulk-${String(i).padStart(4, '0')}`)));
    step('created');
    await page.click('#nav a[data-nav=overview]');
    await page.locator('h1', { hasText: 'Overview' }).waitFor();
    const paint = await page.evaluate(async (n) => {
      const t = performance.now();
      document.querySelector('#nav a[data-nav=vms]').click();
      for (;;) {
        const c = document.querySelector('#vm-count');
        if (document.querySelectorAll('#vm-table tbody tr[data-vm]').length >= 50 && c && c.dataset.shown === String(n)) break;
        await new Promise((r) => setTimeout(r, 5));
      }
      await new Promise((r) => requestAnimationFrame(() => r()));
      return performance.now() - t;
    }, bulkN);
    const filter = await page.evaluate(async () => {
      const s = document.querySelector('input[type=search]');
      const t = performance.now();
      s.value = 'bulk-0042';
      s.dispatchEvent(new Event('input'));
      await new Promise((r) => requestAnimationFrame(() => r()));
      const dt = performance.now() - t;
      const shown = document.querySelectorAll('#vm-table tbody tr[data-vm]').length;
      return [dt, shown];
    });
    if (filter[1] !== 1) throw new Error(`filtering by bulk-0042 shows ${filter[1]} rows`);
    console.log(`measure: ${bulkN} VMs: first paint ${paint.toFixed(0)} ms, filter ${filter[0].toFixed(1)} ms`);
    await page.waitForURL('**/console/vms?q=bulk-0042');
    await page.fill('input[type=search]', 'bulk-');
    await page.locator('#vm-page', { hasText: `Page 1 of ${Math.ceil(bulkN / 50)}` }).waitFor();
    await page.click('#vm-next');
    await page.waitForURL('**/console/vms?q=bulk-&page=2');
    await page.locator('tr[data-vm="default/bulk-0050"]').waitFor();
    await shot('vms-500');
    for (const k of ['bulk-0050', 'bulk-0051', 'bulk-0052']) await page.check(`input[data-select="default/${k}"]`);
    await page.locator('#bulk-count', { hasText: '3 selected' }).waitFor();
    await page.click('#bulk-actions button[data-bulk=restart]');
    await page.locator('#confirm-text', { hasText: 'Restart 3 virtual machines: default/bulk-0050, default/bulk-0051, default/bulk-0052?' }).waitFor();
    await shot('vms-bulk-confirm');
    await page.click('#confirm dialog button[value=cancel], #confirm button[value=cancel]');
    await pool(bulkN, 8, (i) => must(page, 'DELETE', `${KV}/namespaces/default/virtualmachines/bulk-${String(i).padStart(4, '0')}`));

    step('instancetypes, preferences and boot sources');
    await must(page, 'POST', `${IT}/virtualmachineclusterinstancetypes`, { apiVersion: 'instancetype.kubevirt.io/v1beta1', kind: 'VirtualMachineClusterInstancetype', metadata: { name: 'web.small' }, spec: { cpu: { guest: 1 }, memory: { guest: '256Mi' } } });
    await must(page, 'POST', `${IT}/virtualmachineclusterpreferences`, { apiVersion: 'instancetype.kubevirt.io/v1beta1', kind: 'VirtualMachineClusterPreference', metadata: { name: 'web.linux' }, spec: {} });
    await must(page, 'POST', `${CDI}/namespaces/default/datavolumes`, { apiVersion: 'cdi.kubevirt.io/v1beta1', kind: 'DataVolume', metadata: { name: 'golden' }, spec: { source: { blank: {} }, storage: { resources: { requests: { storage: '16Mi' } } } } });
    await must(page, 'POST', `${CDI}/namespaces/default/datasources`, { apiVersion: 'cdi.kubevirt.io/v1beta1', kind: 'DataSource', metadata: { name: 'golden' }, spec: { source: { pvc: { name: 'golden', namespace: 'default' } } } });
    await must(page, 'POST', `${CDI}/namespaces/default/dataimportcrons`, { apiVersion: 'cdi.kubevirt.io/v1beta1', kind: 'DataImportCron', metadata: { name: 'kernel' }, spec: { schedule: '0 0 * * *', managedDataSource: 'kernel', template: { spec: { source: { registry: { url: env('CRON_IMAGE') } }, storage: { resources: { requests: { storage: '64Mi' } } } } } } });
    await page.click('#nav a[data-nav=instancetypes]');
    await page.locator('#table-virtualmachineclusterinstancetypes td', { hasText: 'web.small' }).waitFor();
    await page.locator('#table-virtualmachineclusterpreferences td', { hasText: 'web.linux' }).waitFor();
    await shot('instancetypes');

    step('the Overview lists boot sources with their readiness');
    await must(page, 'POST', `${CDI}/namespaces/default/datasources`, { apiVersion: 'cdi.kubevirt.io/v1beta1', kind: 'DataSource', metadata: { name: 'orphan' }, spec: { source: { pvc: { name: 'no-such-claim', namespace: 'default' } } } });
    await page.click('#nav a[data-nav=overview]');
    for (const ds of ['golden', 'orphan']) {
      const row = page.locator(`#overview-sources tr[data-object="default/${ds}"] td:nth-child(3)`);
      await row.waitFor();
      // What the page says follows the DataSource's Ready condition as the API reports it.
      let want = null;
      for (let i = 0; i < 100; i++) {
        const o = await must(page, 'GET', `${CDI}/namespaces/default/datasources/${ds}`);
        const c = (o.status?.conditions || []).find((x) => x.type === 'Ready');
        want = c?.status === 'True' ? 'Ready' : c ? 'Not ready' : null;
        const text = (await row.textContent()).trim();
        if (want && text.startsWith(want)) break;
        await page.waitForTimeout(200);
      }
      const text = (await row.textContent()).trim();
      if (!want || !text.startsWith(want)) throw new Error(`Overview says ${ds} is "${text}", the API ${want}`);
    }
    await shot('overview-boot-sources');
    await must(page, 'DELETE', `${CDI}/namespaces/default/datasources/orphan`);

    step('compliance results: failures first, filters kept in the URL, a remediation');
    await page.click('#nav a[data-nav=compliance]');
    await page.locator('#compliance-table tbody tr[data-rule]').first().waitFor();
    const failing = Number(await page.locator('#compliance-counts [data-status=FAIL] .stat').textContent());
    const expectFail = Number(env('COMPLIANCE_FAIL'));
    if (failing !== expectFail) throw new Error(`the console counts ${failing} failed rules, the scan ${expectFail}`);
    const firstStatus = await page.locator('#compliance-table tbody tr[data-rule] td').first().textContent();
    if (expectFail > 0 && firstStatus.trim() !== 'FAIL') throw new Error(`the first rule shown is ${firstStatus}, not a failure`);
    await page.selectOption('#compliance-status', 'PASS');
    await page.waitForURL(/\/console\/compliance\?status=PASS$/);
    const shown = await page.locator('#compliance-table tbody tr[data-rule] td:first-child').allTextContents();
    if (!shown.length || shown.some((t) => t.trim() !== 'PASS')) throw new Error(`status filter shows ${shown.join(',')}`);
    await page.fill('#main input[type=search]', 'hostdisk');
    await page.selectOption('#compliance-status', '');
    const rule = page.locator('#compliance-table tbody tr[data-rule=virt-node-hostdisk-gated]');
    await rule.locator('summary').click();
    await rule.locator('dd', { hasText: env('COMPLIANCE_REMEDIATION') }).waitFor();
    await shot('compliance');

    step('create from an instancetype, a preference and a boot source');
    await page.click('#nav a[data-nav=create]');
    await page.locator('#wiz-source option', { hasText: 'default/golden' }).waitFor({ state: 'attached' });
    const formName = `${name}-it`;
    await page.fill('#wiz-name', formName);
    await page.selectOption('#wiz-instancetype', { label: 'web.small (cluster)' });
    await page.selectOption('#wiz-preference', { label: 'web.linux (cluster)' });
    await page.selectOption('#wiz-source', { label: 'default/golden' });
    await page.fill('#wiz-size', '32Mi');
    await page.fill('#wiz-ssh-key', 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk0ZXN0a2V5 web@test');
    await page.uncheck('#wiz-start');
    const wizYaml = await page.locator('#wiz-yaml').innerText();
    for (const want of ['name: web.small', 'name: web.linux', 'kind: DataSource', 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk0ZXN0a2V5', 'storage: 32Mi']) {
      if (!wizYaml.includes(want)) throw new Error(`the form's YAML lacks ${want}:\n${wizYaml}`);
    }
    const wizCmd = await page.locator('#wiz-command').innerText();
    if (!wizCmd.includes('virtctl create vm') || !wizCmd.includes('--instancetype web.small') || !wizCmd.includes('src:default/golden')) throw new Error(`the form's command: ${wizCmd}`);
    await shot('create-form');
    await page.click('#wiz-submit');
    await page.waitForURL(`**/console/vms/default/${formName}`);
    const made = await must(page, 'GET', `${KV}/namespaces/default/virtualmachines/${formName}`);
    if (made.spec.instancetype?.name !== 'web.small' || made.spec.dataVolumeTemplates?.[0]?.spec?.sourceRef?.name !== 'golden') throw new Error(`created: ${JSON.stringify(made.spec)}`);

    step('a refused YAML edit shows the field path');
    await page.locator('.tabs a', { hasText: 'YAML' }).click();
    await page.waitForFunction((n) => (document.querySelector('#vm-yaml')?.value || '').includes(`name: ${n}`), formName);
    const edited = await page.locator('#vm-yaml').inputValue();
    const bad = edited.replace(/\nspec:\n/, '\nspec:\n  bogusEdit: 1\n');
    await page.locator('#vm-yaml').fill(bad);
    await page.click('#yaml-save');
    const editProblem = page.locator('#yaml-errors li.problem').first();
    await editProblem.waitFor();
    const editText = await editProblem.innerText();
    if (!editText.includes('bogusEdit')) throw new Error(`the refused edit does not name the field: ${editText}`);
    const editLine = String(bad.split('\n').findIndex((l) => l.includes('bogusEdit')) + 1);
    if (!(await page.locator('.editor .gutter .bad').allInnerTexts()).includes(editLine)) throw new Error(`line ${editLine} is not marked`);
    console.log(`edit refusal: ${editText.replace(/\n/g, ' ')}`);
    await shot('yaml-edit-refused');

    step('delete from the list');
    await page.click('#nav a[data-nav=vms]');
    const formRow = page.locator(`tr[data-vm="default/${formName}"]`);
    await formRow.locator('button[data-action=delete]').click();
    await page.locator('#confirm-text', { hasText: `Delete virtual machine default/${formName}?` }).waitFor();
    await page.click('#confirm-ok');
    await formRow.waitFor({ state: 'detached' });

    step('the boot-source switch turns automatic updates off and on');
    await page.click('#nav a[data-nav=bootsources]');
    const sw = page.locator('input[data-auto-update="default/kernel"]');
    await sw.waitFor();
    if (!(await sw.isChecked())) throw new Error('automatic updates start off');
    await sw.click();
    await page.locator('#confirm-text', { hasText: 'Turn off automatic updates of boot source default/kernel?' }).waitFor();
    await page.click('#confirm-ok');
    const annotation = async () => (await must(page, 'GET', `${CDI}/namespaces/default/dataimportcrons/kernel`)).metadata.annotations?.['dataimportcrontemplate.kubevirt.io/enable'];
    for (let i = 0; (await annotation()) !== 'false'; i++) { if (i > 100) throw new Error('the switch did not turn updates off'); await page.waitForTimeout(100); }
    await page.locator('input[data-auto-update="default/kernel"]:not(:checked)').waitFor();
    await shot('bootsources-auto-update-off');
    await page.locator('input[data-auto-update="default/kernel"]').click();
    for (let i = 0; (await annotation()) !== undefined; i++) { if (i > 100) throw new Error('the switch did not turn updates on'); await page.waitForTimeout(100); }
    await page.locator('input[data-auto-update="default/kernel"]:checked').waitFor();

    step('refused YAML shows the field path');
    await page.click('#nav a[data-nav=create]');
    await page.click('#create-yaml-tab');
    await page.locator('#yaml-editor').fill(env('BAD_YAML'));
    await page.click('#create-submit');
    const problem = page.locator('#create-errors li.problem').first();
    await problem.waitFor();
    const field = await problem.getAttribute('data-field');
    const text = await problem.innerText();
    if (!text.includes(env('BAD_FIELD'))) throw new Error(`the refusal does not name ${env('BAD_FIELD')}: ${text}`);
    const marked = await page.locator('.editor .gutter .bad').allInnerTexts();
    if (!marked.includes(env('BAD_LINE'))) throw new Error(`line ${env('BAD_LINE')} is not marked (marked: ${marked}; field ${field}; ${text})`);
    console.log(`refusal: ${text.replace(/\n/g, ' ')}`);
    await shot('create-refused');

    step('create from YAML');
    await page.locator('#yaml-editor').fill(env('VM_YAML'));
    const cmd = await page.locator('#create-command').innerText();
    if (!cmd.includes(`virtctl --server ${env('BASE')} create -f ${name}.yaml`)) throw new Error(`no virtctl command: ${cmd}`);
    await page.click('#create-submit');
    await page.waitForURL(`**/console/vms/default/${name}`);

    step('listed, started, Running without a reload');
    await page.click('#nav a[data-nav=vms]');
    const row = page.locator(`tr[data-vm="default/${name}"]`);
    await row.locator('.vm-status', { hasText: 'Stopped' }).waitFor();
    await page.fill('input[type=search]', name.slice(0, 4));
    await page.waitForURL(`**/console/vms?q=${name.slice(0, 4)}`);
    await page.evaluate(() => { window.sameDocument = true; });
    await shot('vms');
    await row.locator('button', { hasText: 'Start' }).click();
    await page.locator('#confirm-text', { hasText: `Start virtual machine default/${name}?` }).waitFor();
    await page.click('#confirm-ok');
    await row.locator('.vm-status', { hasText: 'Running' }).waitFor({ timeout: 200000 });
    if (!(await page.evaluate(() => window.sameDocument === true))) throw new Error('the list page was reloaded');
    await shot('vms-running');

    step('the running VM offers Migrate, or says why it cannot move');
    await row.locator('a').first().click();
    const mig = page.locator('#vm-migrate');
    await mig.waitFor();
    if (await mig.isDisabled()) {
      const why = await mig.getAttribute('title');
      await page.locator('#vm-not-migratable', { hasText: why.split(':')[0] }).waitFor();
    }
    await shot('vm-overview');

    step('serial console shows the boot');
    await page.locator('.tabs a', { hasText: 'Serial console' }).click();
    await page.locator('#serial-state', { hasText: 'Connected' }).waitFor({ timeout: 60000 });
    await page.locator('#serial-terminal .xterm-rows', { hasText: env('BOOT_MARKER') }).waitFor({ timeout: 200000 });
    await shot('serial');
    const scrape = () => page.evaluate(async () => (await fetch('/metrics', { headers: { Authorization: `Bearer ${sessionStorage.getItem('virt-console-token')}` } })).text());
    const fs = require('fs');
    fs.writeFileSync(`${env('SHOTS')}/metrics-1.txt`, await scrape());
    const metrics1At = Date.now();

    step('serial console: a command typed into xterm.js runs in the guest');
    // The guest's shell runs on its serial console (the test initramfs' demo mode).
    await page.locator('#serial-terminal .xterm-rows', { hasText: 'Hello from the guest' }).waitFor({ timeout: 200000 });
    // Typed as key presses into the terminal: the shell echoes the line and prints the result,
    // which the typed line does not contain.
    const typeLine = async (p, line) => {
      await p.locator('#serial-terminal .xterm-screen').click();
      await p.keyboard.type(line, { delay: 20 });
      await p.keyboard.press('Enter');
    };
    await typeLine(page, 'echo web-$((6*7))-ok');
    await page.locator('#serial-terminal .xterm-rows', { hasText: 'web-42-ok' }).waitFor({ timeout: 60000 });
    // Network traffic for /metrics: the guest brings its NIC up and asks the node's DHCP server.
    await typeLine(page, 'ip link set eth0 up; udhcpc -i eth0 -n -q -t 3 -T 1 -s /bin/true; ping -c 2 -W 1 10.0.2.1; echo net-$((1+1))-done');
    await page.locator('#serial-terminal .xterm-rows', { hasText: 'net-2-done' }).waitFor({ timeout: 90000 });
    await shot('serial-typed');
    const [download] = await Promise.all([page.waitForEvent('download'), page.locator('button', { hasText: 'Download log' }).click()]);
    const logFile = `${env('SHOTS')}/serial-download.log`;
    await download.saveAs(logFile);
    const logText = fs.readFileSync(logFile, 'utf8');
    for (const want of [env('BOOT_MARKER'), 'web-42-ok', 'net-2-done']) {
      if (!logText.includes(want)) throw new Error(`the downloaded log (${download.suggestedFilename()}, ${logText.length} bytes) lacks ${want}`);
    }
    console.log(`serial log: ${download.suggestedFilename()}, ${logText.length} bytes`);

    step('a second viewer is told the console is held');
    const other = await ctx.newPage();
    await other.goto(page.url());
    // sessionStorage is per tab: the second tab logs in too.
    await other.fill('#login-token', env('TOKEN'));
    await other.click('#login-form button[type=submit]');
    await other.locator('#serial-state', { hasText: 'Another viewer holds this console' }).waitFor({ timeout: 60000 });
    console.log(`second viewer: ${await other.locator('#serial-state').innerText()}`);
    await other.screenshot({ path: `${env('SHOTS')}/serial-held.png`, fullPage: true });
    if ((await page.locator('#serial-state').innerText()) !== 'Connected') throw new Error('the first viewer lost the console');

    step('VNC console');
    await page.locator('.tabs a', { hasText: 'VNC console' }).click();
    // The first tab let the serial console go: the second takes it and leaves it idle while this
    // one works (keepalive: it must still work after more than a minute).
    for (let i = 0; ; i++) {
      await other.locator('button', { hasText: 'Reconnect' }).click();
      try {
        await other.locator('#serial-state', { hasText: /^Connected$/ }).waitFor({ timeout: 5000 });
        break;
      } catch (e) {
        if (i >= 10) throw e;
      }
    }
    const idleFrom = Date.now();
    await page.locator('#vnc-state', { hasText: /^Connected$/ }).waitFor({ timeout: 60000 }).catch(async (e) => { throw new Error(`VNC: ${await page.locator('#vnc-state').innerText()} (${e.message})`); });
    // The guest's framebuffer size, drawn at a visible size on the page.
    const size = await page.locator('#vnc-screen canvas').evaluate((c) => {
      const r = c.getBoundingClientRect();
      return [c.width, c.height, Math.round(r.width), Math.round(r.height)];
    });
    if (!(size[0] >= 320 && size[1] >= 200 && size[2] >= 320 && size[3] >= 150)) throw new Error(`the VNC canvas is ${size}`);
    // Not blank: the guest's text screen (firmware and kernel messages, console=tty0) has more than
    // one colour.
    let colours = 0;
    for (let i = 0; i < 40 && colours < 2; i++) {
      colours = await page.locator('#vnc-screen canvas').evaluate((c) => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const seen = new Set();
        for (let p = 0; p < d.length && seen.size < 16; p += 4 * 7) seen.add((d[p] << 16) | (d[p + 1] << 8) | d[p + 2]);
        return seen.size;
      });
      if (colours < 2) await page.waitForTimeout(500);
    }
    console.log(`vnc: ${colours} colour(s) on the canvas`);
    if (colours < 2) throw new Error('the VNC canvas is blank (one colour): the guest\'s text screen is not shown');
    console.log(`vnc: ${size[0]}x${size[1]} shown at ${size[2]}x${size[3]}`);
    await shot('vnc');

    step('VM details');
    await page.locator('.tabs a', { hasText: 'YAML' }).click();
    await page.waitForFunction((n) => (document.querySelector('#vm-yaml')?.value || '').includes(`name: ${n}`), name);
    await page.locator('.tabs a', { hasText: 'Configuration' }).click();
    await page.locator('td', { hasText: 'cloudinitdisk' }).first().waitFor();
    await page.locator('.tabs a', { hasText: 'Overview' }).click();
    await page.locator('dd', { hasText: 'Running' }).first().waitFor();
    await page.locator('[data-chart=cpu][data-points="3"], [data-chart=cpu][data-points="4"], [data-chart=cpu][data-points="5"]').first().waitFor({ timeout: 60000 });
    await shot('details');

    step('/metrics while the guest runs');
    await page.locator('[data-chart=network] .now').filter({ hasText: /KiB\/s/ }).first().waitFor({ timeout: 30000 });
    const since = Date.now() - metrics1At;
    if (since < 4000) await page.waitForTimeout(4000 - since);
    fs.writeFileSync(`${env('SHOTS')}/metrics-2.txt`, await scrape());

    step('a console idle for more than a minute still works');
    const idle = Date.now() - idleFrom;
    if (idle < 65000) await other.waitForTimeout(65000 - idle);
    if ((await other.locator('#serial-state').innerText()) !== 'Connected') throw new Error(`the idle console dropped: ${await other.locator('#serial-state').innerText()}`);
    await typeLine(other, 'echo idle-$((60+5))-ok');
    await other.locator('#serial-terminal .xterm-rows', { hasText: 'idle-65-ok' }).waitFor({ timeout: 30000 });
    console.log(`keepalive: the console answered after ${((Date.now() - idleFrom) / 1000).toFixed(0)} s idle`);
    await other.screenshot({ path: `${env('SHOTS')}/serial-after-idle.png`, fullPage: true });
    await other.close();

    step('Ctrl-Alt-Del through VNC reboots the guest');
    // Last of the guest's checks: the guest reboots, which ends its serial console.
    await page.locator('.tabs a', { hasText: 'VNC console' }).click();
    await page.locator('#vnc-state', { hasText: /^Connected$/ }).waitFor({ timeout: 60000 });
    await page.locator('button', { hasText: 'Send Ctrl-Alt-Del' }).click();
    await page.locator('.tabs a', { hasText: 'Events' }).click();
    await page.getByText('the guest rebooted').first().waitFor({ timeout: 60000 });
    await shot('events-after-ctrl-alt-del');

    step('stop and delete from the list');
    await page.click('#nav a[data-nav=vms]');
    await page.fill('input[type=search]', name);
    await row.locator('button', { hasText: 'Stop' }).click();
    await page.locator('#confirm-text', { hasText: `Stop virtual machine default/${name}?` }).waitFor();
    await page.click('#confirm-ok');
    // The guest, rebooting after Ctrl-Alt-Del, may miss the power button: the VM is Stopping until
    // the grace period (5 s) ends; the list shows the change without a reload.
    await row.locator('.vm-status', { hasText: /Stopp(ing|ed)/ }).waitFor({ timeout: 120000 });
    await shot('vms-stopped');
    await row.locator('button[data-action=delete]').click();
    await page.click('#confirm-ok');
    await row.waitFor({ state: 'detached', timeout: 120000 });
    await page.click('#nav a[data-nav=bootsources]');
    await page.locator('h2', { hasText: 'DataVolumes' }).waitFor();
    await shot('bootsources');

    step('upload a disk image from the browser');
    const img = `${env('SHOTS')}/upload.img`;
    fs.writeFileSync(img, Buffer.alloc(3 * 1048576, 0x5a));
    await page.fill('#upload-name', 'uploaded');
    await page.setInputFiles('#upload-file', img);
    const progressSeen = page.evaluate(() => new Promise((resolve) => {
      const seen = new Set();
      const t = setInterval(() => {
        seen.add(Math.round(document.querySelector('#upload-progress').value));
        if (document.querySelector('#upload-state').dataset.done) { clearInterval(t); resolve([...seen]); }
      }, 5);
    }));
    await page.click('#upload-submit');
    await page.locator('#upload-state[data-done=true]').waitFor({ timeout: 120000 }).catch(async (e) => { throw new Error(`upload: ${await page.locator('#upload-state').innerText()} (${e.message})`); });
    const seenValues = await progressSeen;
    if (!seenValues.includes(100)) throw new Error(`the progress bar never reached 100: ${seenValues}`);
    console.log(`upload: ${await page.locator('#upload-state').innerText()}; progress values seen: ${seenValues.join(',')}`);
    await page.locator('tr', { hasText: 'uploaded' }).locator('td', { hasText: 'Succeeded' }).waitFor({ timeout: 60000 });
    await shot('bootsources-upload');
    if (errors.length) throw new Error(errors.join('\n'));
    step('done');
  } catch (e) {
    await shot('failure').catch(() => {});
    console.error(`FAILED: ${e.stack || e}`);
    if (errors.length) console.error(errors.join('\n'));
    process.exitCode = 1;
  } finally {
    await ctx.close();
  }
})();
