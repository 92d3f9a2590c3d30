// SMART on FHIR sign-in: the portal is the public client `intellihealth-portal` (authorization
// code + PKCE S256). The tokens live in this module's memory only; the PKCE verifier and the
// state ride in sessionStorage for the one redirect round trip and are removed on return.

export const CLIENT_ID = 'intellihealth-portal';
const PENDING_KEY = 'intellihealth-portal-signin';

export const ROLES = {
  patient: {
    scope: 'launch/patient openid fhirUser patient/*.cruds',
    label: 'I am a patient',
  },
  practitioner: {
    scope: 'openid fhirUser user/*.rs',
    label: 'I am a practitioner',
  },
};

/** The signed-in session, or null. Never written to any storage. */
let session = null;

export function current() {
  return session;
}

/**
 * Forgets the session; with `revoke`, also asks the server to revoke its token (RFC 7009;
 * best effort: the token expires by itself anyway).
 */
export async function signOut(revoke = false) {
  const ending = session;
  session = null;
  if (!revoke || !ending) return;
  try {
    const config = await discovery();
    if (!config.revocation_endpoint) return;
    await fetch(config.revocation_endpoint, {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token: ending.token, token_type_hint: 'access_token', client_id: CLIENT_ID }),
    });
  } catch {
    // Signed out here whatever the server answered.
  }
}

export function origin() {
  return window.location.origin;
}

export function redirectUri() {
  return `${origin()}/portal/`;
}

export function fhirBase() {
  return `${origin()}/fhir`;
}

function base64url(bytes) {
  let text = '';
  for (const b of new Uint8Array(bytes)) text += String.fromCharCode(b);
  return btoa(text).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function randomString(bytes = 32) {
  return base64url(crypto.getRandomValues(new Uint8Array(bytes)));
}

async function discovery() {
  const response = await fetch(`${origin()}/.well-known/smart-configuration`, {
    headers: { Accept: 'application/json' },
  });
  if (!response.ok) throw new Error(`the server's sign-in settings could not be read (HTTP ${response.status})`);
  return response.json();
}

/** Starts a sign-in: to the server's own login page, and back to /portal/ with a code. */
export async function signIn(role) {
  const config = await discovery();
  const verifier = randomString(48);
  const challenge = base64url(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier)));
  const state = randomString(24);
  sessionStorage.setItem(PENDING_KEY, JSON.stringify({ state, verifier, role }));
  const params = new URLSearchParams({
    response_type: 'code',
    client_id: CLIENT_ID,
    redirect_uri: redirectUri(),
    scope: ROLES[role].scope,
    state,
    aud: fhirBase(),
    code_challenge: challenge,
    code_challenge_method: 'S256',
  });
  window.location.assign(`${config.authorization_endpoint}?${params}`);
}

function claimsOf(jwt) {
  try {
    const part = jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const json = decodeURIComponent(
      Array.from(atob(part), (c) => `%${c.charCodeAt(0).toString(16).padStart(2, '0')}`).join(''),
    );
    return JSON.parse(json);
  } catch {
    return {};
  }
}

/**
 * Finishes a sign-in when the page is the redirect back (`?code=…&state=…` or `?error=…`):
 * the query is removed from the address bar at once. Returns null when this is no redirect,
 * the session when signed in; throws a readable Error otherwise.
 */
export async function completeSignIn() {
  const query = new URLSearchParams(window.location.search);
  if (!query.has('code') && !query.has('error')) return null;
  const pendingText = sessionStorage.getItem(PENDING_KEY);
  sessionStorage.removeItem(PENDING_KEY);
  window.history.replaceState(null, '', '/portal/');
  if (query.has('error')) {
    const why = query.get('error') === 'access_denied'
      ? 'You chose not to allow the portal to use your record.'
      : `The sign-in was refused (${query.get('error')}${query.get('error_description') ? `: ${query.get('error_description')}` : ''}).`;
    throw new Error(why);
  }
  const pending = pendingText ? JSON.parse(pendingText) : null;
  if (!pending || pending.state !== query.get('state')) {
    throw new Error('This sign-in was not started here, or it was already used. Please sign in again.');
  }
  const config = await discovery();
  const response = await fetch(config.token_endpoint, {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded', Accept: 'application/json' },
    body: new URLSearchParams({
      grant_type: 'authorization_code',
      code: query.get('code'),
      redirect_uri: redirectUri(),
      client_id: CLIENT_ID,
      code_verifier: pending.verifier,
    }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok || !body.access_token) {
    throw new Error(`The sign-in could not be completed: ${body.error_description || body.error || `HTTP ${response.status}`}.`);
  }
  const claims = claimsOf(body.access_token);
  const idClaims = body.id_token ? claimsOf(body.id_token) : {};
  const fhirUser = String(claims.fhirUser || idClaims.fhirUser || '').replace(/^.*\/(Patient|Practitioner)\//, '$1/');
  const role = fhirUser.startsWith('Practitioner/') ? 'practitioner' : 'patient';
  session = {
    token: body.access_token,
    expiresAt: Date.now() + (Number(body.expires_in) || 3600) * 1000,
    scope: body.scope || '',
    patient: body.patient || (fhirUser.startsWith('Patient/') ? fhirUser.slice(8) : null),
    fhirUser,
    username: idClaims.name || idClaims.preferred_username || claims.sub || '',
    role,
  };
  return session;
}
