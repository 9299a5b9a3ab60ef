// Drives the web console in Debian's chromium with playwright-core (run by tests/web_console.rs).
// Env: PLAYWRIGHT_CORE (module path), BASE (http://127.0.0.1:port), TOKEN, VM_NAME, VM_YAML,
// BAD_YAML, BAD_FIELD, BAD_LINE, SHOTS (screenshot directory), PROFILE (a new user-data-dir),
// BOOT_MARKER (text the guest prints on its serial console).
const { chromium } = require(process.env.PLAYWRIGHT_CORE);
const env = (k) => {
  if (!process.env[k]) throw new Error(`${k} is not set`);
  return process.env[k];
};

function step(name) {
  console.log(`step: ${name} (${((Date.now() - t0) / 1000).toFixed(1)}s)`);
}
const t0 = Date.now();

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

    step('refused YAML shows the field path');
    await page.click('#nav a[data-nav=create]');
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

    step('serial console shows the boot');
    await row.locator('a').first().click();
    await page.locator('.tabs a', { hasText: 'Serial console' }).click();
    await page.locator('#serial-state', { hasText: 'Connected' }).waitFor({ timeout: 60000 });
    await page.locator('#serial-terminal .xterm-rows', { hasText: env('BOOT_MARKER') }).waitFor({ timeout: 200000 });
    await shot('serial');

    step('VNC console');
    await page.locator('.tabs a', { hasText: 'VNC console' }).click();
    await page.locator('#vnc-state', { hasText: 'Connected' }).waitFor({ timeout: 60000 });
    // The guest's framebuffer size, drawn at a visible size on the page.
    const size = await page.locator('#vnc-screen canvas').evaluate((c) => {
      const r = c.getBoundingClientRect();
      return [c.width, c.height, Math.round(r.width), Math.round(r.height)];
    });
    if (!(size[0] >= 320 && size[1] >= 200 && size[2] >= 320 && size[3] >= 150)) throw new Error(`the VNC canvas is ${size}`);
    await page.locator('button', { hasText: 'Send Ctrl-Alt-Del' }).click();
    console.log(`vnc: ${size[0]}x${size[1]} shown at ${size[2]}x${size[3]}`);
    await shot('vnc');

    step('VM details');
    await page.locator('.tabs a', { hasText: 'YAML' }).click();
    await page.locator('#vm-yaml', { hasText: `name: ${name}` }).waitFor();
    await page.locator('.tabs a', { hasText: 'Configuration' }).click();
    await page.locator('td', { hasText: 'cloudinitdisk' }).first().waitFor();
    await page.locator('.tabs a', { hasText: 'Overview' }).click();
    await page.locator('dd', { hasText: 'Running' }).first().waitFor();
    await shot('details');
    await page.click('#nav a[data-nav=bootsources]');
    await page.locator('h2', { hasText: 'DataVolumes' }).waitFor();
    await shot('bootsources');
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
