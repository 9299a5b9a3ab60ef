// The console's shell: login when the API asks for a token, navigation, page routing.
import * as api from './api.js';
import { navigate } from './dom.js';
import { overview } from './pages/overview.js';
import { vmList } from './pages/vms.js';
import { create } from './pages/create.js';
import { vmDetails } from './pages/vm.js';
import { bootSources } from './pages/bootsources.js';
import { instancetypes } from './pages/instancetypes.js';
import { compliance } from './pages/compliance.js';

const main = document.getElementById('main');
let stopPage = null;

const routes = [
  [/^\/console\/?$/, 'overview', () => overview],
  [/^\/console\/vms\/?$/, 'vms', () => vmList],
  [/^\/console\/create\/?$/, 'create', () => create],
  [/^\/console\/vms\/([^/]+)\/([^/]+)\/?$/, 'vms', (m) => (el, q) => vmDetails(el, q, decodeURIComponent(m[1]), decodeURIComponent(m[2]))],
  [/^\/console\/bootsources\/?$/, 'bootsources', () => bootSources],
  [/^\/console\/instancetypes\/?$/, 'instancetypes', () => instancetypes],
  [/^\/console\/compliance\/?$/, 'compliance', () => compliance],
];

function render() {
  if (stopPage) stopPage();
  stopPage = null;
  main.replaceChildren();
  const path = location.pathname;
  for (const [re, nav, page] of routes) {
    const m = path.match(re);
    if (!m) continue;
    document.querySelectorAll('#nav a').forEach((a) => a.classList.toggle('active', a.dataset.nav === nav));
    stopPage = page(m)(main, new URLSearchParams(location.search)) || null;
    return;
  }
  main.textContent = `No page at ${path}.`;
}

function showLogin(message) {
  document.getElementById('nav').hidden = true;
  document.getElementById('logout').hidden = true;
  main.hidden = true;
  const err = document.getElementById('login-error');
  err.hidden = !message;
  err.textContent = message || '';
  document.getElementById('login').hidden = false;
  document.getElementById('login-token').focus();
}

function showApp() {
  document.getElementById('login').hidden = true;
  document.getElementById('nav').hidden = false;
  document.getElementById('logout').hidden = !api.token();
  main.hidden = false;
  render();
}

// Whether the API answers this browser: no token is needed on a listener that does not ask for one.
async function check() {
  try {
    await api.get('/apis/kubevirt.io/v1/virtualmachines?limit=1');
    return true;
  } catch (e) {
    if (e.status === 401) return false;
    throw e;
  }
}

let loggingIn = false;
api.onUnauthorized(() => {
  if (loggingIn) return;
  if (stopPage) stopPage();
  stopPage = null;
  api.clearToken();
  showLogin('Your session ended: the API refused the token. Log in again.');
});

document.getElementById('login-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const t = document.getElementById('login-token').value.trim();
  api.setToken(t);
  loggingIn = true;
  try {
    if (await check()) {
      document.getElementById('login-token').value = '';
      showApp();
    } else {
      api.clearToken();
      showLogin('The API refused this token.');
    }
  } catch (err) {
    showLogin(`The API could not be reached: ${err.message}`);
  } finally {
    loggingIn = false;
  }
});

document.getElementById('logout').addEventListener('click', () => {
  api.clearToken();
  if (stopPage) stopPage();
  stopPage = null;
  showLogin('');
});

document.getElementById('nav').addEventListener('click', (e) => {
  const a = e.target.closest('a');
  if (!a || e.ctrlKey || e.metaKey || e.shiftKey) return;
  e.preventDefault();
  navigate(a.getAttribute('href'));
});

window.addEventListener('popstate', render);

(async () => {
  loggingIn = true;
  let ok = false;
  try {
    ok = await check();
  } catch (err) {
    main.textContent = `The API could not be reached: ${err.message}`;
    return;
  } finally {
    loggingIn = false;
  }
  if (ok) showApp();
  else showLogin(api.token() ? 'The API refused the saved token.' : '');
})();
