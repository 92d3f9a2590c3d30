// For practitioners: the patients who granted them access (what, until when), reading within
// a grant, and asking a patient for access.

import { busy, field, formatDate, h, loading, replace, say, statusLine, uid } from '../dom.js';
import { api } from '../fhir.js';
import { GRANTABLE_TYPES, GROUPS, typeLabel } from '../fhirtext.js';
import { endOf, grantState, typesOf } from '../grants.js';
import { recordView } from './record.js';

function patientOf(consent) {
  const reference = (consent.patient && consent.patient.reference) || '';
  return { reference, id: reference.replace(/^Patient\//, ''), label: (consent.patient && consent.patient.display) || reference };
}

/** The record groups a grant's types open (all for a grant of everything). */
function groupsFor(types) {
  if (types.includes('*')) return GROUPS;
  return GROUPS
    .map((group) => ({ ...group, types: group.types.filter((t) => types.includes(t)) }))
    .filter((group) => group.types.length);
}

export function grantedPage(main, context) {
  const line = statusLine();
  const listBox = h('section', { class: 'card', 'aria-labelledby': 'granted-title' });
  const readerBox = h('section', { class: 'reader', 'aria-label': 'Patient record' });

  function openPatient(patient, grants) {
    const types = [...new Set(grants.flatMap(typesOf))];
    const groups = groupsFor(types);
    const body = h('div');
    const heading = h('h2', { tabindex: '-1' }, `Record of ${patient.label}`);
    replace(readerBox, heading,
      h('p', { class: 'muted' }, `You may read: ${types.map(typeLabel).join(', ')}. Every read is recorded and shown to the patient.`),
      body);
    if (!groups.length) {
      body.append(h('p', {}, 'This grant covers no record group the portal shows.'));
    } else {
      recordView(body, { patient: patient.id, groups, charts: groups.some((g) => g.key === 'observations'), alive: context.alive });
    }
    heading.focus();
  }

  async function load() {
    replace(listBox, h('h2', { id: 'granted-title' }, 'Patients who granted you access'), line, loading('Loading your grants'));
    try {
      const bundle = await api.get('Consent/$granted-to-me');
      if (!context.alive()) return;
      const grants = (bundle.entry || []).map((e) => e.resource).filter((r) => r && r.resourceType === 'Consent');
      const active = grants.filter((g) => grantState(g) === 'active');
      const byPatient = new Map();
      for (const grant of active) {
        const patient = patientOf(grant);
        if (!byPatient.has(patient.reference)) byPatient.set(patient.reference, { patient, grants: [] });
        byPatient.get(patient.reference).grants.push(grant);
      }
      const items = [...byPatient.values()].map(({ patient, grants: theirs }) => {
        const types = [...new Set(theirs.flatMap(typesOf))];
        const until = theirs.map(endOf).filter(Boolean).sort().pop();
        return h('li', { class: 'grant active' },
          h('div', { class: 'grant-head' }, h('strong', {}, patient.label), h('span', { class: 'badge active' }, 'Active')),
          h('p', {}, `You may read: ${types.map(typeLabel).join(', ')}`),
          h('p', {}, `Until ${formatDate(until, true)}`),
          h('button', { type: 'button', class: 'primary', 'aria-label': `Open record of ${patient.label}`, onclick: () => openPatient(patient, theirs) }, 'Open record'));
      });
      replace(listBox, h('h2', { id: 'granted-title' }, 'Patients who granted you access'), line,
        items.length ? h('ul', { class: 'grants' }, items) : h('p', {}, 'No patient has granted you access yet. You can ask for it on “Request access”.'),
        grants.length > active.length ? h('p', { class: 'muted small' }, `${grants.length - active.length} earlier grants have ended or were revoked.`) : null);
    } catch (e) {
      replace(listBox, h('h2', { id: 'granted-title' }, 'Patients who granted you access'), h('p', { class: 'status error', role: 'alert' }, e.message));
    }
  }

  const reload = h('button', { type: 'button' }, 'Refresh');
  reload.addEventListener('click', () => busy(reload, 'Refreshing', load));
  replace(main,
    h('h1', {}, 'My patients'),
    h('p', { class: 'lead' }, 'Patients decide who reads their record. Here are the ones who let you, and what they let you read.'),
    h('div', { class: 'toolbar' }, reload),
    listBox, readerBox);
  load();
}

export function requestPage(main, context) {
  const line = statusLine();
  const patient = h('input', { type: 'text', autocomplete: 'off', required: true, pattern: '[A-Za-z0-9.\\-]{1,64}', spellcheck: 'false' });
  const days = h('input', { type: 'number', min: '1', max: '365', value: '30', required: true });
  const reason = h('textarea', { rows: '3', required: true, maxlength: '500' });
  const typeBoxes = GRANTABLE_TYPES.map(([type, label]) => {
    const id = uid('rtype');
    return { type, box: h('input', { type: 'checkbox', id, value: type, checked: type === 'Observation' }), label: h('label', { for: id }, label) };
  });
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Send the request');
  const form = h('form', { class: 'stack card' },
    field('Patient id', patient, 'The id of the patient\'s record (they can tell you; it is shown in their portal).'),
    h('fieldset', {}, h('legend', {}, 'What you would like to read'),
      h('ul', { class: 'plain options columns' }, typeBoxes.map(({ box, label }) => h('li', {}, box, label)))),
    field('For how many days', days),
    field('Why (the patient reads this)', reason),
    submit);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const types = typeBoxes.filter(({ box }) => box.checked).map(({ type }) => type);
    if (!patient.value.trim()) { say(line, 'Give the patient\'s id.', 'error'); patient.focus(); return; }
    if (!types.length) { say(line, 'Choose at least one kind of record.', 'error'); typeBoxes[0].box.focus(); return; }
    if (!reason.value.trim()) { say(line, 'Say why you need access: the patient decides on it.', 'error'); reason.focus(); return; }
    busy(submit, 'Sending', async () => {
      try {
        const request = await api.post('Consent/$request-access', {
          resourceType: 'Parameters',
          parameter: [
            { name: 'patient', valueReference: { reference: `Patient/${patient.value.trim().replace(/^Patient\//, '')}` } },
            ...types.map((type) => ({ name: 'type', valueCode: type })),
            { name: 'days', valueInteger: Math.round(Number(days.value)) || 30 },
            { name: 'reason', valueString: reason.value.trim() },
          ],
        });
        say(line, `Your request was sent${request && request.id ? ` (request ${request.id.slice(0, 12)})` : ''}. The patient sees it in their portal and decides.`);
        form.reset();
      } catch (e) {
        say(line, `The request was not sent: ${e.message}`, 'error');
      }
    });
  });
  replace(main,
    h('h1', {}, 'Request access'),
    h('p', { class: 'lead' }, 'Ask a patient to let you read part of their record. They approve it by signing a grant with their own key, or decline.'),
    line, form);
}
