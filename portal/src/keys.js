// The patient's signing key: an injected EIP-1193 wallet (eth_signTypedData_v4) when the
// browser has one, or a key made in this browser with viem. A browser key lives in this
// module's memory only; it leaves the page only as an encrypted key file the patient saves
// (PBKDF2-SHA-256 + AES-GCM, WebCrypto), never towards the server.

import { bytesToHex, getAddress, hexToBytes } from 'viem';
import { generatePrivateKey, privateKeyToAccount } from 'viem/accounts';

export const KEY_FILE_FORMAT = 'intellihealth-portal-key';
export const PBKDF2_ITERATIONS = 600_000;

/** The wallet in use: {kind: 'browser'|'injected', address, account?}, or null. */
let wallet = null;
const listeners = new Set();

export function currentWallet() {
  return wallet;
}

export function onWalletChange(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

function setWallet(next) {
  wallet = next;
  for (const listener of listeners) listener(wallet);
}

export function forgetWallet() {
  setWallet(null);
}

export function hasInjectedWallet() {
  return typeof window.ethereum === 'object' && window.ethereum !== null && typeof window.ethereum.request === 'function';
}

export async function connectInjected() {
  const accounts = await window.ethereum.request({ method: 'eth_requestAccounts' });
  if (!accounts || !accounts.length) throw new Error('The wallet shared no account.');
  setWallet({ kind: 'injected', address: getAddress(accounts[0]) });
  return wallet;
}

export function createBrowserKey() {
  const privateKey = generatePrivateKey();
  const account = privateKeyToAccount(privateKey);
  setWallet({ kind: 'browser', address: account.address, account, privateKey, saved: false });
  return wallet;
}

export function markSaved() {
  if (wallet) setWallet({ ...wallet, saved: true });
}

function b64(bytes) {
  let text = '';
  for (const b of new Uint8Array(bytes)) text += String.fromCharCode(b);
  return btoa(text);
}

function unb64(text) {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

async function derive(passphrase, salt, iterations, usage) {
  const base = await crypto.subtle.importKey('raw', new TextEncoder().encode(passphrase.normalize('NFC')), 'PBKDF2', false, ['deriveKey']);
  return crypto.subtle.deriveKey(
    { name: 'PBKDF2', salt, iterations, hash: 'SHA-256' },
    base,
    { name: 'AES-GCM', length: 256 },
    false,
    [usage],
  );
}

/** The browser key as an encrypted key file (a JSON object). */
export async function encryptKeyFile(passphrase) {
  if (!wallet || wallet.kind !== 'browser') throw new Error('There is no browser key to save.');
  const salt = crypto.getRandomValues(new Uint8Array(16));
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const key = await derive(passphrase, salt, PBKDF2_ITERATIONS, 'encrypt');
  const ciphertext = await crypto.subtle.encrypt(
    { name: 'AES-GCM', iv, additionalData: new TextEncoder().encode(wallet.address.toLowerCase()) },
    key,
    hexToBytes(wallet.privateKey),
  );
  return {
    format: KEY_FILE_FORMAT,
    version: 1,
    address: wallet.address,
    kdf: { name: 'PBKDF2', hash: 'SHA-256', iterations: PBKDF2_ITERATIONS, salt: b64(salt) },
    cipher: { name: 'AES-GCM', iv: b64(iv), additionalData: 'address (lower case)' },
    ciphertext: b64(ciphertext),
  };
}

/** Opens a key file with its passphrase; the key becomes the wallet in use. */
export async function loadKeyFile(text, passphrase) {
  let file;
  try {
    file = JSON.parse(text);
  } catch {
    throw new Error('This is not a key file (it is not JSON).');
  }
  if (!file || file.format !== KEY_FILE_FORMAT || file.version !== 1 || !file.kdf || !file.cipher) {
    throw new Error('This is not an IntelliHealth portal key file.');
  }
  if (file.kdf.name !== 'PBKDF2' || file.kdf.hash !== 'SHA-256' || !(file.kdf.iterations >= 100_000) || file.cipher.name !== 'AES-GCM') {
    throw new Error('This key file uses a protection the portal does not know.');
  }
  const key = await derive(passphrase, unb64(file.kdf.salt), file.kdf.iterations, 'decrypt');
  let plain;
  try {
    plain = await crypto.subtle.decrypt(
      { name: 'AES-GCM', iv: unb64(file.cipher.iv), additionalData: new TextEncoder().encode(String(file.address).toLowerCase()) },
      key,
      unb64(file.ciphertext),
    );
  } catch {
    throw new Error('Wrong passphrase, or the key file was changed.');
  }
  const privateKey = bytesToHex(new Uint8Array(plain));
  const account = privateKeyToAccount(privateKey);
  if (account.address.toLowerCase() !== String(file.address).toLowerCase()) {
    throw new Error('The key in this file is not the address the file names.');
  }
  setWallet({ kind: 'browser', address: account.address, account, privateKey, saved: true });
  return wallet;
}

/** The typed data the server gave (the eth_signTypedData_v4 JSON), parsed. */
export function parseTypedData(typedData) {
  return typeof typedData === 'string' ? JSON.parse(typedData) : typedData;
}

/**
 * Signs EIP-712 typed data with the wallet in use. A refusal in an injected wallet becomes
 * an Error saying so.
 */
export async function signTypedData(typedData) {
  if (!wallet) throw new Error('No wallet: create a key in this browser, load your key file, or connect a wallet first.');
  const data = parseTypedData(typedData);
  if (wallet.kind === 'injected') {
    try {
      return await window.ethereum.request({
        method: 'eth_signTypedData_v4',
        params: [wallet.address, typeof typedData === 'string' ? typedData : JSON.stringify(typedData)],
      });
    } catch (e) {
      if (e && (e.code === 4001 || /reject|denied|cancel/i.test(e.message || ''))) {
        throw new Error('The signature was refused in your wallet: nothing was changed.');
      }
      throw new Error(`Your wallet could not sign: ${(e && e.message) || e}`);
    }
  }
  const types = { ...data.types };
  delete types.EIP712Domain;
  return wallet.account.signTypedData({
    domain: data.domain,
    types,
    primaryType: data.primaryType,
    message: data.message,
  });
}
