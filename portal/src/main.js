// The portal: one page, routed in memory (the address bar never carries a page name or any
// health data), a nav bar, and the pages of the signed-in person's role.

import { ROLES, completeSignIn, current, signIn, signOut } from './auth.js';
import { h, replace, say, statusLine } from './dom.js';
import { whenExpired } from './fhir.js';
import { forgetWallet } from './keys.js';
import { auditPage } from './pages/audit.js';
import { grantsPage } from './pages/grants.js';
import { grantedPage, requestPage } from './pages/practitioner.js';
import { recordPage } from './pages/record.js';
import { walletPage } from './pages/wallet.js';

const PAGES = {
  patient: [
    { key: 'record', label: 'My record', render: recordPage },
    { key: 'wallet', label: 'My wallet', render: walletPage },
    { key: 'grants', label: 'Who may see my record', render: grantsPage },
    { key: 'audit', label: 'Who read my data', render: auditPage },
  ],
  practitioner: [
    { key: 'patients', label: 'My patients', render: grantedPage },
    { key: 'request', label: 'Request access', render: requestPage },
  ],
};

const root = document.getElementById('app');
let active = null;
let generation = 0;

function signInScreen(message, kind = 'info') {
  document.title = 'Sign in — IntelliHealth';
  const line = statusLine();
  if (message) say(line, message, kind);
  const buttons = Object.entries(ROLES).map(([role, { label }]) => h('button', {
    type: 'button',
    class: role === 'patient' ? 'primary big' : 'big',
    onclick: async (event) => {
      event.currentTarget.disabled = true;
      try {
        await signIn(role);
      } catch (e) {
        event.currentTarget.disabled = false;
        say(line, `Sign-in could not start: ${e.message}`, 'error');
      }
    },
  }, label));
  const main = h('main', { id: 'main', tabindex: '-1', class: 'signin' },
    h('h1', {}, 'Your health record, your decision'),
    h('p', { class: 'lead' }, 'See your record, decide with your own key who may read it, and check — against the blockchain — who did.'),
    line,
    h('div', { class: 'signin-buttons' }, buttons),
    h('p', { class: 'muted' }, 'You sign in on this server\'s own sign-in page. Your session is kept only in this tab\'s memory: closing or reloading the tab signs you out.'));
  replace(root, header(null), main);
  if (message) main.focus();
}

function header(session) {
  const brand = h('p', { class: 'brand' }, h('span', { class: 'logo', 'aria-hidden': 'true' }, '✚'), ' IntelliHealth');
  if (!session) return h('header', { class: 'top' }, brand);
  const nav = h('nav', { 'aria-label': 'Portal' }, h('ul', {}, PAGES[session.role].map((page) => h('li', {},
    h('button', {
      type: 'button',
      class: 'nav-link',
      dataset: { page: page.key },
      'aria-current': active === page.key ? 'page' : null,
      onclick: () => navigate(page.key),
    }, page.label)))));
  const who = h('div', { class: 'who' },
    h('span', {}, `Signed in as ${session.role} `, h('span', { class: 'mono' }, (session.fhirUser || session.patient || '').replace(/^(Patient|Practitioner)\//, ''))),
    h('button', { type: 'button', class: 'link', onclick: async () => { forgetWallet(); active = null; await signOut(true); signInScreen('You are signed out.'); } }, 'Sign out'));
  return h('header', { class: 'top' }, brand, nav, who);
}

export function navigate(key, options = {}) {
  const session = current();
  if (!session) return signInScreen();
  const page = PAGES[session.role].find((p) => p.key === key) || PAGES[session.role][0];
  active = page.key;
  generation += 1;
  const main = h('main', { id: 'main', tabindex: '-1' });
  replace(root, header(session), main);
  document.title = `${page.label} — IntelliHealth`;
  const context = {
    session,
    navigate,
    options,
    // Whether this page is still the one shown (an answer arriving late is dropped).
    alive: ((mine) => () => mine === generation)(generation),
  };
  page.render(main, context);
  const heading = main.querySelector('h1');
  if (heading) {
    heading.setAttribute('tabindex', '-1');
    if (!options.keepFocus) heading.focus();
  }
}

whenExpired((message) => {
  signOut();
  forgetWallet();
  active = null;
  signInScreen(message, 'error');
});

async function start() {
  // The skip link moves focus without touching the address bar.
  document.addEventListener('click', (event) => {
    const skip = event.target.closest && event.target.closest('a.skip');
    if (!skip) return;
    event.preventDefault();
    const main = document.getElementById('main');
    if (main) main.focus();
  });
  try {
    const session = await completeSignIn();
    if (session) {
      navigate(null);
      return;
    }
  } catch (e) {
    signInScreen(e.message, 'error');
    return;
  }
  signInScreen();
}

start();
