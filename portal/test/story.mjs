// The portal's whole story in a real browser (Debian's chromium driven by playwright-core),
// against a running `intellihealth serve --demo`: the demo patient signs in, sees her charts and
// an entry, downloads her record, makes a key in the browser, saves it encrypted, loads it back,
// binds it, and grants her doctor read access to Observations (the summary of what she signs
// shown first); the doctor (a second browser context, a phone-sized screen) reads one; the
// patient sees that read in "Who read my data", checked against the chain as anchored; she
// revokes, and the doctor is denied; the doctor asks for access and the patient approves.
// Every page is scanned with axe-core (any serious or critical violation fails the run), no
// request may leave the server's origin, and no Content-Security-Policy violation may occur.
//
// Environment: PORTAL_BASE (http://127.0.0.1:PORT), PORTAL_LOGINS (the demo-logins.txt file),
// PORTAL_TEST_MODULES (node_modules with playwright-core and axe-core), PORTAL_SHOTS (where the
// screenshots go), PORTAL_LIVE_DIST (optional: serve /portal/* from this directory instead of
// the binary's embedded copy, with the same headers, to try a front-end change without a
// server rebuild).

import { readFileSync, mkdirSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';

const require = createRequire(`${process.env.PORTAL_TEST_MODULES}/`);
// viem from the portal's own pinned packages: the stand-in for an injected wallet signs with it.
const portalRequire = createRequire(new URL('../package.json', import.meta.url));
const { chromium } = require('playwright-core');
const AXE_SOURCE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

const BASE = process.env.PORTAL_BASE.replace(/\/$/, '');
const SHOTS = process.env.PORTAL_SHOTS;
const LIVE_DIST = process.env.PORTAL_LIVE_DIST || '';
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";
mkdirSync(SHOTS, { recursive: true });

const logins = Object.fromEntries(readFileSync(process.env.PORTAL_LOGINS, 'utf8').split('\n')
  .filter((line) => line.trim() && !line.startsWith('#'))
  .map((line) => line.trim().split(/\s+/))
  .map(([username, password, fhirUser]) => [fhirUser.split('/')[0], { username, password, fhirUser }]));
if (!logins.Patient || !logins.Practitioner) throw new Error(`no patient and practitioner logins in ${process.env.PORTAL_LOGINS}`);
const PATIENT_ID = logins.Patient.fhirUser.split('/')[1];

const problems = [];
// The access tokens the portal was given, seen on the wire (the page keeps them in memory only).
const tokens = {};
let passed = 0;
let failed = 0;
const started = Date.now();

function log(message) {
  console.log(`[portal-test ${((Date.now() - started) / 1000).toFixed(1).padStart(5)}s] ${message}`);
}

async function step(name, work) {
  const t0 = Date.now();
  try {
    await work();
    passed += 1;
    log(`ok   ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    failed += 1;
    log(`FAIL ${name}: ${e && e.stack ? e.stack.split('\n').slice(0, 4).join('\n      ') : e}`);
    throw e;
  }
}

function expect(condition, message) {
  if (!condition) throw new Error(message);
}

/** A context that watches for requests to other hosts, CSP violations and page errors. */
async function newContext(browser, name, options) {
  const context = await browser.newContext({ acceptDownloads: true, ...options });
  context.setDefaultTimeout(20_000);
  if (LIVE_DIST) {
    const types = { 'app.js': 'text/javascript; charset=utf-8', 'app.css': 'text/css; charset=utf-8', 'favicon.ico': 'image/x-icon', 'index.html': 'text/html; charset=utf-8' };
    await context.route(`${BASE}/portal/**`, (route) => {
      const path = new URL(route.request().url()).pathname.replace(/^\/portal\/?/, '') || 'index.html';
      if (!types[path]) return route.continue();
      return route.fulfill({
        status: 200,
        body: readFileSync(join(LIVE_DIST, path)),
        headers: { 'content-type': types[path], 'content-security-policy': CSP, 'cache-control': 'no-cache', 'referrer-policy': 'no-referrer' },
      });
    });
  }
  context.on('request', (request) => {
    const url = request.url();
    if (!url.startsWith(`${BASE}/`) && !url.startsWith('blob:') && !url.startsWith('data:')) {
      problems.push(`${name}: a request left the server's origin: ${url}`);
    }
  });
  context.on('page', (page) => watchPage(page, name));
  context.on('response', async (response) => {
    if (response.url() === `${BASE}/auth/token` && response.ok()) {
      try { tokens[name] = (await response.json()).access_token; } catch { /* not JSON */ }
    }
  });
  return context;
}

function watchPage(page, name) {
  page.on('console', (message) => {
    const text = message.text();
    if (/Content Security Policy|Refused to (load|apply|execute|connect)/i.test(text)) problems.push(`${name}: CSP violation: ${text}`);
  });
  page.on('pageerror', (error) => problems.push(`${name}: page error: ${error.message}`));
}

/** axe-core on the page as it is: any serious or critical violation fails. */
async function scan(page, label) {
  // Not page.addScriptTag: an injected <script> is inline code, which the portal's CSP refuses
  // (as it should). The DevTools protocol's evaluation is not subject to the page's CSP.
  if (!(await page.evaluate(() => typeof window.axe === 'object'))) await page.evaluate(AXE_SOURCE);
  const result = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const r = await axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 3).map((n) => n.target.join(' ')) }));
  });
  const serious = result.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  for (const v of result.filter((x) => !serious.includes(x))) log(`     axe (${label}): ${v.impact} ${v.id}: ${v.help} — ${v.nodes.join(', ')}`);
  expect(!serious.length, `axe on ${label}: ${serious.map((v) => `${v.impact} ${v.id} (${v.help}) at ${v.nodes.join(', ')}`).join('; ')}`);
  return result.length;
}

/** A screenshot of the viewport, scrolled to the top or to `at` (a locator). */
async function shot(page, file, at = null) {
  const path = join(SHOTS, file);
  if (at) await at.evaluate((element) => element.scrollIntoView({ block: 'center' }));
  else await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path });
  const size = statSync(path).size;
  log(`     screenshot ${file} (${Math.round(size / 1024)} KB)`);
  if (size > 250 * 1024) problems.push(`${file} is ${Math.round(size / 1024)} KB (keep screenshots under ~200 KB)`);
}

/** Signs in through the server's own login and approval pages. */
async function signIn(page, role, login) {
  await page.goto(`${BASE}/portal/`);
  await page.getByRole('button', { name: role === 'patient' ? 'I am a patient' : 'I am a practitioner' }).click();
  await page.waitForURL(/\/auth\/authorize/);
  await page.getByLabel('Username').fill(login.username);
  await page.getByLabel('Password').fill(login.password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('button', { name: 'Allow' }).click();
  await page.waitForURL(`${BASE}/portal/`);
  await page.locator('main h1').waitFor();
  expect(!page.url().includes('?'), `the address bar still carries the sign-in: ${page.url()}`);
  const stored = await page.evaluate(() => ({ local: localStorage.length, session: sessionStorage.length }));
  expect(stored.local === 0 && stored.session === 0, `something was left in browser storage: ${JSON.stringify(stored)}`);
}

async function nav(page, label) {
  await page.getByRole('navigation', { name: 'Portal' }).getByRole('button', { name: label, exact: true }).click();
  await page.getByRole('heading', { level: 1, name: label, exact: true }).waitFor();
}

async function readDownload(download) {
  const stream = await download.createReadStream();
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

async function main() {
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
  let scans = 0;
  try {
    const patientContext = await newContext(browser, 'patient', { viewport: { width: 1280, height: 800 } });
    const patient = await patientContext.newPage();
    const doctorContext = await newContext(browser, 'practitioner', {
      viewport: { width: 390, height: 844 }, deviceScaleFactor: 1, isMobile: true, hasTouch: true,
    });
    const doctor = await doctorContext.newPage();
    let keyFile = null;
    let observationTitle = null;

    await step('the sign-in page is served with its CSP and is accessible', async () => {
      if (!LIVE_DIST) {
        // The binary embeds portal/dist as it was when it was built: a stale one is not tested.
        const served = Buffer.from(await (await fetch(`${BASE}/portal/app.js`)).arrayBuffer());
        const built = readFileSync(new URL('../dist/app.js', import.meta.url));
        expect(served.equals(built), 'the server embeds another portal/dist/app.js than the one here: run cargo build (or --live-dist)');
      }
      const response = await patient.goto(`${BASE}/portal/`);
      expect(response.status() === 200, `GET /portal/: ${response.status()}`);
      const csp = response.headers()['content-security-policy'] || '';
      expect(csp.includes("script-src 'self'") && csp.includes("default-src 'none'"), `CSP: ${csp}`);
      await patient.getByRole('button', { name: 'I am a patient' }).waitFor();
      // Keyboard: the first Tab reaches the skip link, which moves focus to the content; the
      // next Tab reaches the first sign-in button.
      await patient.keyboard.press('Tab');
      expect(await patient.evaluate(() => document.activeElement.textContent) === 'Skip to content', 'Tab does not reach the skip link first');
      await patient.keyboard.press('Enter');
      expect(await patient.evaluate(() => document.activeElement.id) === 'main', 'the skip link does not move focus to the content');
      await patient.keyboard.press('Tab');
      expect(await patient.evaluate(() => document.activeElement.textContent) === 'I am a patient', 'Tab does not reach the sign-in buttons');
      scans += 1;
      await scan(patient, 'sign-in');
      await shot(patient, 'sign-in.png');
    });

    await step('the demo patient signs in (server login page, PKCE, back to the portal)', async () => {
      await signIn(patient, 'patient', logins.Patient);
      await patient.getByRole('heading', { level: 1, name: 'My record' }).waitFor();
    });

    await step('My record: charts of vital signs and labs, groups, search and paging', async () => {
      await patient.locator('svg.chart').first().waitFor();
      const charts = await patient.locator('svg.chart').count();
      expect(charts >= 4, `only ${charts} charts`);
      const labels = await patient.locator('svg.chart title').allTextContents();
      for (const wanted of ['Heart rate', 'Blood pressure', 'Body weight', 'HbA1c']) {
        expect(labels.some((l) => l.toLowerCase().includes(wanted.toLowerCase())), `no chart of ${wanted}: ${labels.join(' | ')}`);
      }
      const description = await patient.locator('svg.chart desc').first().textContent();
      expect(/measurements from/.test(description), `chart without a text alternative: ${description}`);
      await patient.getByRole('button', { name: /^Observations \(\d+\)$/ }).click();
      await patient.getByRole('heading', { level: 2, name: 'Observations' }).waitFor();
      await patient.getByRole('button', { name: 'Next' }).waitFor();
      const search = patient.getByLabel('Search observations');
      await search.fill('heart rate');
      await patient.getByText(/\d+ of \d+ match “heart rate”/).waitFor();
      await search.fill('');
      scans += 1;
      await scan(patient, 'my record');
      await shot(patient, 'record.png');
    });

    await step('an entry opens to a readable view and its raw JSON', async () => {
      const first = patient.locator('ul.items button.item').first();
      observationTitle = (await first.locator('.item-title').textContent()).trim();
      await first.click();
      await patient.locator('section.detail h2').waitFor();
      await patient.getByText('Raw JSON (FHIR R4)').click();
      const raw = JSON.parse(await patient.locator('section.detail pre.json').textContent());
      expect(raw.resourceType === 'Observation', `raw JSON of a ${raw.resourceType}`);
      scans += 1;
      await scan(patient, 'an entry');
      await shot(patient, 'record-entry.png', patient.locator('section.detail h2'));
      await patient.getByRole('button', { name: '← Back to the list' }).click();
    });

    await step('"Download my record" gives the $everything Bundle as a file', async () => {
      const [download] = await Promise.all([
        patient.waitForEvent('download'),
        patient.getByRole('button', { name: 'Download my record' }).click(),
      ]);
      const bundle = JSON.parse(await readDownload(download));
      expect(bundle.resourceType === 'Bundle' && bundle.entry.length > 50, `a Bundle of ${bundle.entry && bundle.entry.length} entries`);
      expect(bundle.entry.some((e) => e.resource.resourceType === 'Patient' && e.resource.id === PATIENT_ID), 'no Patient in the download');
      log(`     downloaded ${download.suggestedFilename()}: ${bundle.entry.length} resources`);
    });

    await step('My wallet: a key made in the browser, saved encrypted, loaded back, bound', async () => {
      await nav(patient, 'My wallet');
      scans += 1;
      await scan(patient, 'my wallet (no key)');
      await patient.getByRole('button', { name: 'Create a key in this browser' }).click();
      const address = (await patient.getByTestId('wallet-address').textContent()).trim();
      expect(/^0x[0-9a-fA-F]{40}$/.test(address), `address ${address}`);
      const passphrase = 'correct horse battery staple';
      await patient.getByLabel('Passphrase (at least 8 characters)').fill(passphrase);
      await patient.getByLabel('The same passphrase again').fill(passphrase);
      const [download] = await Promise.all([
        patient.waitForEvent('download'),
        patient.getByRole('button', { name: 'Save encrypted key file' }).click(),
      ]);
      keyFile = await readDownload(download);
      const file = JSON.parse(keyFile);
      expect(file.address === address && file.kdf.name === 'PBKDF2' && file.kdf.iterations >= 200_000 && file.cipher.name === 'AES-GCM', `key file ${keyFile}`);
      expect(Buffer.from(file.ciphertext, 'base64').length === 48, 'the key file holds more than an encrypted key');
      // Loaded back with a wrong passphrase: refused; with the right one: the same key.
      await patient.getByText('Load a key file you saved before').click();
      await patient.getByLabel('Key file', { exact: true }).setInputFiles({ name: 'key.json', mimeType: 'application/json', buffer: Buffer.from(keyFile) });
      await patient.getByLabel('Passphrase of the key file').fill('not the passphrase');
      await patient.getByRole('button', { name: 'Load key' }).click();
      await patient.getByText('Wrong passphrase, or the key file was changed.').waitFor();
      await patient.getByLabel('Key file', { exact: true }).setInputFiles({ name: 'key.json', mimeType: 'application/json', buffer: Buffer.from(keyFile) });
      await patient.getByLabel('Passphrase of the key file').fill(passphrase);
      await patient.getByRole('button', { name: 'Load key' }).click();
      await patient.getByText('Your key is loaded.').waitFor();
      expect((await patient.getByTestId('wallet-address').textContent()).trim() === address, 'another key was loaded');
      await patient.getByRole('button', { name: 'Bind this key to my record' }).click();
      await patient.getByText(/^Bound: your record now answers to/).waitFor({ timeout: 30_000 });
      await patient.locator('.bind-status .badge.ok').waitFor();
      scans += 1;
      await scan(patient, 'my wallet (bound)');
      await shot(patient, 'wallet.png');
    });

    await step('Grant access: the doctor may read Observations, the summary shown before signing', async () => {
      await nav(patient, 'Who may see my record');
      await patient.getByLabel(/Riverside Family Practice/).waitFor();
      await patient.getByLabel('Find a practitioner, organisation or app by name').fill('Khan');
      await patient.getByLabel(/Riverside Family Practice/).waitFor({ state: 'detached' });
      await patient.getByLabel(/Dr\. Amira Khan/).check();
      await patient.getByLabel('Observations (vital signs, lab results)').check();
      await patient.getByRole('button', { name: 'Review what I will sign' }).click();
      const summary = patient.getByTestId('grant-summary');
      await summary.waitFor();
      const text = await summary.textContent();
      for (const wanted of ['Dr. Amira Khan', 'Observations', 'reading only', 'contract', 'on chain']) {
        expect(text.includes(wanted), `the summary does not say “${wanted}”: ${text}`);
      }
      scans += 1;
      await scan(patient, 'grant summary');
      await shot(patient, 'grant-summary.png', summary);
      await patient.getByRole('button', { name: 'Sign and grant' }).click();
      await patient.getByText(/^Granted: Dr\. Amira Khan may read/).waitFor({ timeout: 30_000 });
      const grant = patient.locator('li.grant.active', { hasText: 'Dr. Amira Khan' });
      await grant.waitFor();
      expect(/Granted on chain in transaction/.test(await grant.textContent()), 'the grant shows no transaction');
      scans += 1;
      await scan(patient, 'who may see my record');
      await shot(patient, 'grants.png');
    });

    await step('the doctor (phone-sized, second context) signs in and reads one Observation', async () => {
      await signIn(doctor, 'practitioner', logins.Practitioner);
      await doctor.getByRole('heading', { level: 1, name: 'My patients' }).waitFor();
      const item = doctor.locator('ul.grants li', { hasText: PATIENT_ID });
      await item.waitFor();
      expect(/Observations/.test(await item.textContent()), 'the grant does not say Observations');
      scans += 1;
      await scan(doctor, 'practitioner: my patients (phone)');
      await shot(doctor, 'practitioner-phone.png');
      await item.getByRole('button', { name: 'Open record' }).click();
      await doctor.locator('ul.items button.item').first().waitFor();
      await doctor.locator('ul.items button.item').first().click();
      await doctor.locator('section.detail h2').waitFor();
      scans += 1;
      await scan(doctor, 'practitioner: an Observation (phone)');
      await shot(doctor, 'practitioner-observation-phone.png', doctor.locator('section.detail h2'));
      await doctor.getByRole('button', { name: '← Back to the list' }).click();
    });

    await step('Who read my data: the doctor\'s read, checked in the browser as anchored on chain', async () => {
      await nav(patient, 'Who read my data');
      const deadline = Date.now() + 90_000;
      let anchored = null;
      while (Date.now() < deadline) {
        const reads = patient.locator('li.event', { hasText: 'Dr. Amira Khan' }).filter({ hasText: /\bread\b/ });
        if (await reads.count()) {
          const ok = reads.locator('.verify.anchored');
          try {
            await ok.first().waitFor({ timeout: 8_000 });
            anchored = (await ok.first().textContent()).trim();
            break;
          } catch {
            // Not anchored yet: the server anchors every interval; look again.
          }
        }
        await patient.getByRole('button', { name: 'Refresh' }).click();
        await patient.waitForTimeout(1_500);
      }
      expect(anchored && /Anchored in block \d+/.test(anchored), 'the doctor\'s read was not shown anchored within 90 s');
      log(`     ${anchored.split('—')[0].trim()}`);
      scans += 1;
      await scan(patient, 'who read my data');
      await shot(patient, 'audit.png');
    });

    await step('the patient revokes in one click and a signature', async () => {
      await nav(patient, 'Who may see my record');
      const grant = patient.locator('li.grant.active', { hasText: 'Dr. Amira Khan' });
      await grant.getByRole('button', { name: /Revoke/ }).click();
      await patient.getByText('Access of Dr. Amira Khan was revoked.').waitFor({ timeout: 30_000 });
      await patient.locator('li.grant.revoked', { hasText: 'Dr. Amira Khan' }).waitFor();
    });

    await step('the doctor is then denied', async () => {
      await doctor.locator('ul.items button.item').first().click();
      const error = doctor.locator('.group-panel [role=alert]');
      await error.waitFor();
      const text = await error.textContent();
      expect(/Access denied/.test(text), `not denied: ${text}`);
      log(`     ${text.trim().slice(0, 140)}`);
      await doctor.getByRole('navigation', { name: 'Portal' }).getByRole('button', { name: 'My patients', exact: true }).click();
      await doctor.getByText('No patient has granted you access yet.').waitFor();
    });

    await step('an emergency (break-glass) read and the denied read show in "Who read my data"', async () => {
      // The doctor breaks the glass from her own system (any client of the server, with her token).
      const read = await fetch(`${BASE}/fhir/Patient/${PATIENT_ID}`, {
        headers: {
          Authorization: `Bearer ${tokens.practitioner}`,
          'X-Purpose-Of-Use': 'BTG',
          'X-Break-Glass-Reason': 'Unconscious in the emergency department',
        },
      });
      expect(read.status === 200, `break-glass read: HTTP ${read.status}`);
      await nav(patient, 'Who read my data');
      const emergency = patient.locator('li.event.btg', { hasText: 'Dr. Amira Khan' });
      await emergency.waitFor();
      expect(/Emergency access \(break-glass\)/.test(await emergency.textContent()), 'the break-glass read is not marked');
      await patient.locator('li.event.denied', { hasText: 'Dr. Amira Khan' }).first().waitFor();
      scans += 1;
      await scan(patient, 'who read my data (break-glass)');
      await shot(patient, 'audit-break-glass.png');
    });

    await step('the doctor requests access; the patient approves it', async () => {
      await nav(doctor, 'Request access');
      await doctor.getByLabel('Patient id').fill(PATIENT_ID);
      await doctor.getByLabel('For how many days').fill('7');
      await doctor.getByLabel('Why (the patient reads this)').fill('Follow-up of your blood pressure after the change of medication.');
      scans += 1;
      await scan(doctor, 'request access (phone)');
      await doctor.getByRole('button', { name: 'Send the request' }).click();
      await doctor.getByText(/^Your request was sent/).waitFor();
      await shot(doctor, 'request-access-phone.png', doctor.getByText(/^Your request was sent/));
      await nav(patient, 'My record');
      await nav(patient, 'Who may see my record');
      const request = patient.locator('li.grant.proposed', { hasText: 'Dr. Amira Khan' });
      await request.waitFor();
      expect(/for 7 days/.test(await request.textContent()), `the request reads: ${await request.textContent()}`);
      scans += 1;
      await scan(patient, 'an access request');
      await shot(patient, 'access-request.png', request);
      await request.getByRole('button', { name: /^Approve/ }).click();
      await patient.getByText(/^You granted Dr\. Amira Khan what they asked for/).waitFor({ timeout: 30_000 });
      await patient.locator('li.grant.active', { hasText: 'Dr. Amira Khan' }).waitFor();
      await doctor.getByRole('navigation', { name: 'Portal' }).getByRole('button', { name: 'My patients', exact: true }).click();
      await doctor.locator('ul.grants li', { hasText: PATIENT_ID }).waitFor();
    });

    await step('a second request is declined', async () => {
      await nav(doctor, 'Request access');
      await doctor.getByLabel('Patient id').fill(PATIENT_ID);
      await doctor.getByLabel('Conditions').check();
      await doctor.getByLabel('Why (the patient reads this)').fill('Annual review of your conditions.');
      await doctor.getByRole('button', { name: 'Send the request' }).click();
      await doctor.getByText(/^Your request was sent/).waitFor();
      await nav(patient, 'My record');
      await nav(patient, 'Who may see my record');
      const request = patient.locator('li.grant.proposed', { hasText: 'Dr. Amira Khan' });
      await request.getByRole('button', { name: /^Decline/ }).click();
      await patient.getByText('You declined the request of Dr. Amira Khan.').waitFor();
      await request.waitFor({ state: 'detached' });
    });

    await step('an injected EIP-1193 wallet binds (eth_signTypedData_v4); a refused signature says so', async () => {
      const { generatePrivateKey, privateKeyToAccount } = portalRequire('viem/accounts');
      const account = privateKeyToAccount(generatePrivateKey());
      let refuse = false;
      let signed = 0;
      const walletContext = await newContext(browser, 'injected-wallet', { viewport: { width: 1280, height: 800 } });
      await walletContext.exposeFunction('__testWallet', async (what, address, json) => {
        if (what === 'address') return account.address;
        if (refuse) return 'refuse';
        expect(address.toLowerCase() === account.address.toLowerCase(), `asked to sign for ${address}`);
        const typed = JSON.parse(json);
        delete typed.types.EIP712Domain;
        signed += 1;
        return account.signTypedData(typed);
      });
      // What a wallet extension injects: window.ethereum, an EIP-1193 provider.
      await walletContext.addInitScript(() => {
        window.ethereum = {
          async request({ method, params }) {
            if (method === 'eth_requestAccounts' || method === 'eth_accounts') return [await window.__testWallet('address')];
            if (method === 'eth_signTypedData_v4') {
              const signature = await window.__testWallet('sign', params[0], params[1]);
              if (signature === 'refuse') throw Object.assign(new Error('User rejected the request.'), { code: 4001 });
              return signature;
            }
            throw Object.assign(new Error(`${method} is not supported`), { code: 4200 });
          },
        };
      });
      const page = await walletContext.newPage();
      await signIn(page, 'patient', logins.Patient);
      await nav(page, 'My wallet');
      await page.getByRole('button', { name: 'Use my browser wallet' }).click();
      await page.getByText('Your wallet is connected.').waitFor();
      expect((await page.getByTestId('wallet-address').textContent()).trim() === account.address, 'another address');
      await page.getByRole('button', { name: 'Bind this key to my record' }).click();
      await page.getByText(/^Bound: your record now answers to/).waitFor({ timeout: 30_000 });
      expect(signed === 1, `the wallet signed ${signed} times`);
      refuse = true;
      await nav(page, 'Who may see my record');
      const grant = page.locator('li.grant.active', { hasText: 'Dr. Amira Khan' });
      await grant.getByRole('button', { name: /Revoke/ }).click();
      await grant.getByText('Not revoked: The signature was refused in your wallet: nothing was changed.').waitFor();
      await walletContext.close();
    });

    await step('a token revoked elsewhere leads back to sign-in with a clear message', async () => {
      expect(tokens.practitioner, 'the practitioner\'s token was not seen');
      const revoked = await fetch(`${BASE}/auth/revoke`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ token: tokens.practitioner, client_id: 'intellihealth-portal' }),
      });
      expect(revoked.ok, `revocation: HTTP ${revoked.status}`);
      await doctor.getByRole('navigation', { name: 'Portal' }).getByRole('button', { name: 'My patients', exact: true }).click();
      await doctor.getByText('Your session has expired. Please sign in again.').waitFor();
      await doctor.getByRole('button', { name: 'I am a practitioner' }).waitFor();
    });

    await step('signing out revokes the patient\'s token', async () => {
      expect(tokens.patient, 'the patient\'s token was not seen');
      await patient.getByRole('button', { name: 'Sign out' }).click();
      await patient.getByText('You are signed out.').waitFor();
      const read = await fetch(`${BASE}/fhir/Patient/${PATIENT_ID}`, { headers: { Authorization: `Bearer ${tokens.patient}` } });
      expect(read.status === 401, `the signed-out token still reads: HTTP ${read.status}`);
    });

    await step('no request left the origin, no CSP violation, no page error', async () => {
      expect(!problems.length, problems.join('\n      '));
    });
    log(`     ${scans} pages scanned with axe-core`);
  } finally {
    await browser.close();
  }
}

main().then(() => {
  console.log(`portal-test: ${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}, (e) => {
  if (!failed) console.error(e);
  for (const p of problems) log(`     also: ${p}`);
  console.log(`portal-test: ${passed} passed, ${failed || 1} failed`);
  process.exit(1);
});
