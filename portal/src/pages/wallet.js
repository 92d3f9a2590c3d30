// "My wallet": the key that signs the patient's decisions. An injected wallet when the browser
// has one; otherwise a key made here, saved as an encrypted key file and loaded again later.
// Binding: GET $wallet-binding (typed data) → the wallet signs → POST the signature.

import { keccak256, stringToBytes, concat, pad } from 'viem';
import { busy, download, field, h, replace, say, statusLine } from '../dom.js';
import { api, param, parameters } from '../fhir.js';
import {
  PBKDF2_ITERATIONS, connectInjected, createBrowserKey, currentWallet, encryptKeyFile,
  hasInjectedWallet, loadKeyFile, markSaved, onWalletChange, parseTypedData, signTypedData,
} from '../keys.js';

const WALLET_OF = keccak256(stringToBytes('walletOf(bytes32)')).slice(0, 10);

/** What the chain says about the patient's binding (cached for the session's page views). */
const chainFacts = { patientHash: null, registry: null, bound: undefined };

export function bindingFacts() {
  return chainFacts;
}

/** The wallet the registry holds for the patient, read on chain (null: none). */
async function boundOnChain() {
  if (!chainFacts.patientHash || !chainFacts.registry) return undefined;
  const result = await api.rpc('eth_call', [{ to: chainFacts.registry, data: concat([WALLET_OF, pad(chainFacts.patientHash)]) }, 'latest']);
  const address = `0x${String(result).slice(-40)}`;
  return /^0x0{40}$/.test(address) ? null : address;
}

async function prepareBinding(patient, address) {
  const answer = await api.get(`Patient/${encodeURIComponent(patient)}/$wallet-binding?address=${encodeURIComponent(address)}`);
  const typedData = param(answer, 'typedData');
  const parsed = parseTypedData(typedData);
  chainFacts.patientHash = parsed.message.patient;
  chainFacts.registry = parsed.domain.verifyingContract;
  return { typedData, parsed };
}

function shortAddress(address) {
  return address ? `${address.slice(0, 8)}…${address.slice(-6)}` : '';
}

export function walletSummary() {
  const wallet = currentWallet();
  if (!wallet) return 'No key loaded';
  return `${wallet.kind === 'injected' ? 'Wallet' : 'Browser key'} ${wallet.address}`;
}

export function walletPage(main, context) {
  const { session } = context;
  const patient = session.patient;
  const keyLine = statusLine();
  const saveLine = statusLine();
  const bindLine = statusLine();
  const keyBox = h('div', { class: 'card' });
  const saveBox = h('section', { class: 'card', 'aria-labelledby': 'save-title' });
  const bindBox = h('section', { class: 'card', 'aria-labelledby': 'bind-title' });

  const keyBadge = h('span', { class: 'key-badge' });

  function renderKey() {
    const wallet = currentWallet();
    const create = h('button', { type: 'button', class: wallet ? '' : 'primary' }, wallet && wallet.kind === 'browser' ? 'Create a new key in this browser' : 'Create a key in this browser');
    create.addEventListener('click', () => {
      createBrowserKey();
      say(keyLine, 'A new key was made in this browser. Save it as an encrypted key file before you leave: it exists nowhere else.');
    });
    const connect = hasInjectedWallet()
      ? h('button', { type: 'button', class: 'primary', onclick: async (event) => {
        await busy(event.currentTarget, 'Asking your wallet', async () => {
          try {
            await connectInjected();
            say(keyLine, 'Your wallet is connected.');
          } catch (e) {
            say(keyLine, `Your wallet did not connect: ${e.message}`, 'error');
          }
        });
      } }, 'Use my browser wallet')
      : null;

    const fileInput = h('input', { type: 'file', accept: '.json,application/json' });
    const passInput = h('input', { type: 'password', autocomplete: 'current-password' });
    const load = h('button', { type: 'submit' }, 'Load key');
    const loadForm = h('form', { class: 'stack', 'aria-label': 'Load a key file' },
      field('Key file', fileInput),
      field('Passphrase of the key file', passInput),
      load);
    loadForm.addEventListener('submit', (event) => {
      event.preventDefault();
      const file = fileInput.files && fileInput.files[0];
      if (!file) { say(keyLine, 'Choose your key file first.', 'error'); fileInput.focus(); return; }
      busy(load, 'Opening the key file', async () => {
        try {
          await loadKeyFile(await file.text(), passInput.value);
          passInput.value = '';
          say(keyLine, 'Your key is loaded. It stays in this tab\'s memory until you close or reload it.');
        } catch (e) {
          say(keyLine, e.message, 'error');
        }
      });
    });

    replace(keyBox,
      h('h2', { id: 'key-title' }, 'Your key'),
      wallet
        ? h('p', { class: 'key-status' }, wallet.kind === 'injected' ? 'Your browser wallet: ' : 'Key in this browser: ',
          h('strong', { class: 'mono address', 'data-testid': 'wallet-address' }, wallet.address),
          wallet.kind === 'browser' && !wallet.saved ? h('span', { class: 'badge warn' }, 'not saved yet') : null, keyBadge)
        : h('p', {}, 'You have no key loaded. Your key signs every decision about your record: who may see it, and for how long. The server never sees it.'),
      keyLine,
      h('div', { class: 'button-row' }, connect, create),
      h('details', { class: 'load', open: !wallet }, h('summary', {}, 'Load a key file you saved before'), loadForm));
  }

  function renderSave() {
    const wallet = currentWallet();
    if (!wallet || wallet.kind !== 'browser') { saveBox.hidden = true; return; }
    saveBox.hidden = false;
    const pass = h('input', { type: 'password', autocomplete: 'new-password', minlength: '8', required: true });
    const again = h('input', { type: 'password', autocomplete: 'new-password', required: true });
    const save = h('button', { type: 'submit', class: wallet.saved ? '' : 'primary' }, 'Save encrypted key file');
    const form = h('form', { class: 'stack' },
      field('Passphrase (at least 8 characters)', pass, 'You need it to load the key again. It is never sent anywhere; if you lose it, the key file cannot be opened.'),
      field('The same passphrase again', again),
      save);
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      if (pass.value.length < 8) { say(saveLine, 'The passphrase must be at least 8 characters long.', 'error'); pass.focus(); return; }
      if (pass.value !== again.value) { say(saveLine, 'The two passphrases differ.', 'error'); again.focus(); return; }
      busy(save, 'Encrypting', async () => {
        try {
          const file = await encryptKeyFile(pass.value);
          download(`intellihealth-key-${wallet.address.slice(2, 10).toLowerCase()}.json`, JSON.stringify(file, null, 2), 'application/json');
          pass.value = '';
          again.value = '';
          markSaved();
          say(saveLine, 'Your key file was saved. Keep it and its passphrase safe.');
        } catch (e) {
          say(saveLine, `The key file could not be made: ${e.message}`, 'error');
        }
      });
    });
    const explain = h('p', {}, `The key file is encrypted in this browser (PBKDF2-SHA-256, ${PBKDF2_ITERATIONS.toLocaleString('en')} rounds, AES-GCM) with a passphrase you choose.`);
    replace(saveBox,
      h('h2', { id: 'save-title' }, 'Save your key'),
      saveLine,
      wallet.saved
        ? h('details', {}, h('summary', {}, 'Saved. Save another copy'), explain, form)
        : [explain, form]);
  }

  async function renderBind() {
    const wallet = currentWallet();
    const status = h('p', { class: 'bind-status', 'aria-live': 'polite' });
    const bind = h('button', { type: 'button', class: 'primary', disabled: !wallet }, 'Bind this key to my record');
    bind.addEventListener('click', () => busy(bind, 'Binding', async () => {
      const current = currentWallet();
      try {
        const { typedData } = await prepareBinding(patient, current.address);
        say(bindLine, 'Signing the binding…');
        const signature = await signTypedData(typedData);
        const answer = await api.post(`Patient/${encodeURIComponent(patient)}/$wallet-binding`, parameters({ address: current.address, signature }));
        chainFacts.bound = current.address;
        say(bindLine, `Bound: your record now answers to ${current.address}. Transaction ${param(answer, 'txHash')} in block ${param(answer, 'blockNumber')}.`);
        renderStatus(status, current);
      } catch (e) {
        say(bindLine, `The key could not be bound: ${e.message}`, 'error');
      }
    }));
    replace(bindBox,
      h('h2', { id: 'bind-title' }, 'Bind your key to your record'),
      h('p', {}, 'Binding tells the consent registry on the blockchain that this key speaks for you. Binding a new key replaces the old one (if you lost it, say).'),
      status, bindLine,
      wallet ? bind : h('p', { class: 'muted' }, 'Create, load or connect a key first.'));
    renderStatus(status, wallet);
  }

  async function renderStatus(status, wallet) {
    if (!wallet) { replace(status, ''); return; }
    try {
      if (!chainFacts.patientHash) await prepareBinding(patient, wallet.address);
      const bound = await boundOnChain();
      chainFacts.bound = bound;
      if (!context.alive()) return;
      const same = bound && bound.toLowerCase() === wallet.address.toLowerCase();
      if (!bound) replace(status, 'No wallet is bound to your record yet.');
      else if (same) replace(status, h('span', { class: 'badge ok' }, 'Bound'), ' This key is the one bound to your record on chain.');
      else replace(status, h('span', { class: 'badge warn' }, 'Other key'), ` Your record is bound to ${shortAddress(bound)}, not to this key.`);
      replace(keyBadge, same ? h('span', { class: 'badge ok' }, 'bound to your record') : bound ? h('span', { class: 'badge warn' }, 'not the bound key') : h('span', { class: 'badge warn' }, 'not bound yet'));
    } catch (e) {
      replace(status, `The binding could not be checked on chain: ${e.message}`);
    }
  }

  function renderAll() {
    renderKey();
    renderSave();
    renderBind();
  }

  replace(main,
    h('h1', {}, 'My wallet'),
    h('p', { class: 'lead' }, 'Your own key decides who may read your record. It never leaves this browser.'),
    keyBox, saveBox, bindBox);
  renderAll();
  const off = onWalletChange(() => {
    if (!context.alive()) { off(); return; }
    renderAll();
  });
}
