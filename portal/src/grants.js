// Grants as Consent resources, both ways: the draft a patient signs (the shape
// `Consent/$prepare` reads) and the mirrored grants and access requests the server lists.

import { api, param } from './fhir.js';
import { conceptText, humanName, referenceText } from './fhirtext.js';
import { parseTypedData, signTypedData } from './keys.js';

export const SIGNATURE_EXTENSION = 'https://intellihealth.dev/fhir/StructureDefinition/eip712-signature';
export const TX_SYSTEM = 'https://intellihealth.dev/fhir/NamingSystem/ethereum-transaction';
export const REVOCATION_TX_SYSTEM = 'https://intellihealth.dev/fhir/NamingSystem/ethereum-revocation-transaction';
export const GRANT_ID_SYSTEM = 'https://intellihealth.dev/fhir/NamingSystem/consent-grant-id';
export const CLIENT_ID_SYSTEM = 'urn:ietf:params:oauth:client-id';
export const CLIENT_NAME_EXTENSION = 'https://intellihealth.dev/fhir/StructureDefinition/client-name';
export const REASON_EXTENSION = 'https://intellihealth.dev/fhir/StructureDefinition/access-request-reason';

/** A grantee as a Consent's `provision.actor.reference`. */
export function granteeReference(grantee) {
  return grantee.clientId
    ? { identifier: { system: CLIENT_ID_SYSTEM, value: grantee.clientId } }
    : { reference: grantee.reference };
}

/** A draft grant from `patient` to `grantee` of read access to `types` (none: all) until `end`. */
export function draftConsent(patient, grantee, types, end) {
  const provision = {
    type: 'permit',
    period: { end },
    actor: [{
      role: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ParticipationType', code: 'IRCP' }] },
      reference: granteeReference(grantee),
    }],
    action: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentaction', code: 'access' }] }],
  };
  if (types.length && !types.includes('*')) {
    provision.class = types.map((code) => ({ system: 'http://hl7.org/fhir/resource-types', code }));
  }
  return {
    resourceType: 'Consent',
    status: 'proposed',
    scope: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'patient-privacy' }] },
    category: [{ coding: [{ system: 'http://loinc.org', code: '59284-0' }] }],
    patient: { reference: `Patient/${patient}` },
    policyRule: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'OPTIN' }] },
    provision,
  };
}

export function withSignature(consent, signature) {
  const others = (consent.extension || []).filter((e) => e.url !== SIGNATURE_EXTENSION);
  return { ...consent, extension: [...others, { url: SIGNATURE_EXTENSION, valueString: signature }] };
}

/** `$prepare`: the typed data the wallet will sign for `consent`, parsed and as sent. */
export async function prepare(consent) {
  const answer = await api.post('Consent/$prepare', consent);
  const typedData = param(answer, 'typedData');
  return { typedData, parsed: parseTypedData(typedData) };
}

/** Signs prepared typed data and posts the grant; the mirrored grant Consent. */
export async function signAndGrant(consent, typedData) {
  const signature = await signTypedData(typedData);
  return api.post('Consent', withSignature(consent, signature));
}

/** Revokes a grant: `$prepare` of it as inactive, signed, `PUT` back. */
export async function revoke(grant) {
  const inactive = { ...grant, status: 'inactive' };
  delete inactive.meta;
  delete inactive.text;
  inactive.extension = (inactive.extension || []).filter((e) => e.url !== SIGNATURE_EXTENSION);
  const { typedData } = await prepare(inactive);
  const signature = await signTypedData(typedData);
  return api.put(`Consent/${encodeURIComponent(grant.id)}`, withSignature(inactive, signature));
}

/** The identifier value of `system` in a Consent, if any. */
export function identifierValue(consent, system) {
  const found = (consent.identifier || []).find((i) => i.system === system);
  return found ? found.value : null;
}

/** The grantee (actor) of a Consent: {reference?, clientId?, label}. */
export function actorOf(consent) {
  const actor = ((consent.provision || {}).actor || [])[0];
  const reference = actor && actor.reference ? actor.reference : {};
  if (reference.reference) return { reference: reference.reference, label: reference.display || reference.reference };
  if (reference.identifier) {
    const { system, value } = reference.identifier;
    if (system === CLIENT_ID_SYSTEM) return { clientId: value, label: `App ${value}` };
    return { label: `An identity the server cannot name (${String(value).slice(0, 12)}…)` };
  }
  return { label: 'Unknown' };
}

export function typesOf(consent) {
  const classes = ((consent.provision || {}).class || []).map((c) => c.code).filter(Boolean);
  return classes.length ? classes : ['*'];
}

export function endOf(consent) {
  const provision = consent.provision || {};
  return (provision.period && provision.period.end) || null;
}

/** active | expired | revoked | proposed | other, as a patient would say it. */
export function grantState(consent, now = Date.now()) {
  if (consent.status === 'proposed') return 'proposed';
  if (consent.status === 'inactive' || consent.status === 'rejected') return 'revoked';
  if (consent.status !== 'active') return consent.status || 'other';
  const end = endOf(consent);
  if (end && Date.parse(end) <= now) return 'expired';
  return 'active';
}

/** Someone who can be granted access, from `Consent/$grantees`. */
export function granteeFromResource(resource) {
  const name = typeof resource.name === 'string'
    ? resource.name
    : Array.isArray(resource.name) ? humanName(resource.name[0]) : '';
  if (resource.resourceType === 'Basic') {
    const client = (resource.identifier || []).find((i) => i.system === CLIENT_ID_SYSTEM);
    const named = (resource.extension || []).find((e) => e.url === CLIENT_NAME_EXTENSION);
    const label = (named && named.valueString) || name || (client && client.value) || 'App';
    return client ? { clientId: client.value, label, kind: 'App' } : null;
  }
  const kind = resource.resourceType === 'Organization' ? 'Organization' : resource.resourceType === 'Practitioner' ? 'Practitioner' : resource.resourceType;
  return { reference: `${resource.resourceType}/${resource.id}`, label: name || `${resource.resourceType}/${resource.id}`, kind };
}

/** Grantees matching `name` (all when empty). */
export async function searchGrantees(name) {
  const bundle = await api.get(`Consent/$grantees${name ? `?name=${encodeURIComponent(name)}` : ''}`);
  return (bundle.entry || []).map((e) => e.resource).filter(Boolean).map(granteeFromResource).filter(Boolean);
}

/** A name map (reference or client id → label) for the grantees the server knows. */
export async function granteeNames() {
  const names = new Map();
  try {
    for (const grantee of await searchGrantees('')) names.set(grantee.reference || grantee.clientId, grantee.label);
  } catch {
    // The names are a nicety: without them references are shown as they are.
  }
  return names;
}

export function labelFor(actor, names) {
  const key = actor.reference || actor.clientId;
  return (key && names.get(key)) || actor.label;
}

/** Answers an access request. */
export async function answerRequest(request, answer, grantId) {
  const parameter = [{ name: 'answer', valueCode: answer }];
  if (grantId) parameter.push({ name: 'grant', valueString: grantId });
  return api.post(`Consent/${encodeURIComponent(request.id)}/$answer`, { resourceType: 'Parameters', parameter });
}

export function requestReason(request) {
  const fromExtension = (request.extension || []).find((e) => e.url === REASON_EXTENSION || /reason/i.test(e.url || ''));
  if (fromExtension) return fromExtension.valueString || conceptText(fromExtension.valueCodeableConcept) || '';
  const provision = request.provision || {};
  const purposes = (provision.purpose || []).map((p) => p.display || p.code).filter(Boolean);
  if (purposes.length) return purposes.join(', ');
  return (request.policyRule && request.policyRule.text)
    || (request.sourceAttachment && request.sourceAttachment.title)
    || (request.text && request.text.div ? '' : '')
    || '';
}

/** The days a request asks for: from its period, or an extension saying so. */
export function requestDays(request) {
  const period = (request.provision || {}).period || {};
  if (period.start && period.end) {
    return Math.max(1, Math.round((Date.parse(period.end) - Date.parse(period.start)) / 86_400_000));
  }
  const days = (request.extension || []).find((e) => /days/i.test(e.url || ''));
  if (days) return Number(days.valueInteger || days.valuePositiveInt || days.valueDecimal || days.valueString) || 30;
  if (period.end) return Math.max(1, Math.round((Date.parse(period.end) - Date.now()) / 86_400_000));
  return 30;
}

export function requesterOf(request) {
  const actor = actorOf(request);
  if (actor.reference || actor.clientId) return actor;
  const performer = (request.performer || [])[0] || (request.organization || [])[0];
  if (performer && performer.reference) return { reference: performer.reference, label: referenceText(performer) };
  return actor;
}

/** The grant id a grant Consent carries (its id is the grant id's 64 hex digits). */
export function grantIdOf(consent) {
  return identifierValue(consent, GRANT_ID_SYSTEM) || (consent.id ? `0x${consent.id}` : null);
}
