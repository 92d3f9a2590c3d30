// "Who read my data": the patient's AuditEvents as a timeline (who, what, when, from which
// app, allowed or denied, break-glass highlighted), each checked in this browser against the
// chain (see verify.js).

import { busy, formatDate, h, loading, replace, say, statusLine } from '../dom.js';
import { api } from '../fhir.js';
import { codingText } from '../fhirtext.js';
import { granteeNames } from '../grants.js';
import { verifyAuditEvent } from '../verify.js';

const PAGE = 50;

const ACTIONS = { C: 'created', R: 'read', U: 'changed', D: 'deleted', E: 'ran an operation on' };

function agentWho(agent) {
  if (!agent || !agent.who) return null;
  const who = agent.who;
  if (who.reference) return { key: who.reference, label: who.display || who.reference };
  if (who.identifier) return { key: who.identifier.value, label: who.display || who.identifier.value, client: true };
  return null;
}

function isBreakGlass(event) {
  return (event.agent || []).some((agent) => (agent.purposeOfUse || []).some((p) => (p.coding || []).some((c) => c.code === 'BTG')))
    || (event.purposeOfEvent || []).some((p) => (p.coding || []).some((c) => c.code === 'BTG'));
}

function outcomeOf(event) {
  if (event.outcome === '0' || event.outcome === undefined) return { key: 'allowed', label: 'Allowed' };
  if (event.outcome === '4') return { key: 'denied', label: 'Denied' };
  return { key: 'failed', label: 'Failed' };
}

/** What was touched: the resources judged (role 4), as Type/id, refused ones marked. */
function whatOf(event) {
  const entities = (event.entity || []).filter((e) => e.role && (e.role.code === '4' || e.role.code === 4) && e.what);
  if (entities.length) return entities.map((e) => ({ reference: e.what.reference || '', refused: e.description === 'refused' }));
  // Nothing judged one by one (the patient's own Patient resource, say): the path asked for.
  const path = /^HTTP \d+ [A-Z]+ \/fhir\/([A-Za-z]+\/[A-Za-z0-9.-]+)(?:[/?]|$)/.exec(event.outcomeDesc || '');
  return path ? [{ reference: path[1], refused: event.outcome === '4' }] : [];
}

// The interactions in words.
const WORDS = {
  read: 'read',
  vread: 'read an earlier version of',
  'search-type': 'searched, and was shown',
  'search-system': 'searched, and was shown',
  'search-compartment': 'searched your record, and was shown',
  'history-instance': 'read the history of',
  'history-type': 'read the history of',
  'history-system': 'read the history of',
  create: 'created',
  update: 'changed',
  patch: 'changed',
  delete: 'deleted',
  transaction: 'sent a transaction touching',
  $everything: 'downloaded the whole record',
  $verify: 'checked the anchor of',
  '$granted-to-me': 'listed their grants, among them',
  '$wallet-binding': 'bound a wallet to',
  $prepare: 'prepared a signature for',
  '$request-access': 'asked for access to',
  $answer: 'answered the access request',
  $grantees: 'looked up whom to grant to',
  $export: 'exported',
  token: 'was given access (a token) to',
  login: 'signed in',
  authorize: 'started a sign-in',
  approve: 'approved a sign-in',
};

const APPS = { 'intellihealth-portal': 'the IntelliHealth patient portal' };

function interactionOf(event) {
  const subtype = (event.subtype || [])[0];
  const code = subtype ? subtype.code : null;
  if (code && WORDS[code]) return WORDS[code];
  const name = subtype ? codingText(subtype) : codingText(event.type);
  return name || ACTIONS[event.action] || 'accessed';
}

export function auditPage(main, context) {
  const { session } = context;
  const patient = session.patient;
  const self = `Patient/${patient}`;
  const line = statusLine();
  const list = h('ol', { class: 'timeline' });
  const more = h('button', { type: 'button', hidden: true }, 'Show older events');
  const mine = h('input', { type: 'checkbox', id: 'show-mine' });
  const verifyAll = h('button', { type: 'button' }, 'Check every event shown');
  let names = new Map();
  let next = `AuditEvent?patient=${encodeURIComponent(self)}&_sort=-date&_count=${PAGE}`;
  const events = [];

  function rowFor(event) {
    const requestor = agentWho((event.agent || []).find((a) => a.requestor) || (event.agent || [])[0]);
    const app = (event.agent || []).filter((a) => !a.requestor).map(agentWho).find((w) => w && w.client)
      || (requestor && requestor.client ? requestor : null);
    const outcome = outcomeOf(event);
    const btg = isBreakGlass(event);
    const whoLabel = requestor ? (requestor.key === self ? 'You' : names.get(requestor.key) || requestor.label) : 'Someone unidentified';
    const what = whatOf(event);
    const status = h('p', { class: 'verify', 'aria-live': 'polite' });
    const check = h('button', { type: 'button', class: 'small' }, 'Check on chain');
    check.setAttribute('aria-label', `Check on chain the event of ${formatDate(event.recorded, true)}`);
    const item = h('li', { class: ['event', outcome.key, btg && 'btg'], 'data-event': event.id },
      h('div', { class: 'event-head' },
        h('time', { datetime: event.recorded }, formatDate(event.recorded, true)),
        h('span', { class: `badge ${outcome.key}` }, outcome.label),
        btg ? h('span', { class: 'badge btg' }, 'Emergency access (break-glass)') : null),
      h('p', { class: 'event-what' }, h('strong', {}, whoLabel), ` — ${interactionOf(event)}`,
        what.length ? ` ${what.slice(0, 3).map((w) => `${w.reference}${w.refused ? ' (refused)' : ''}`).join(', ')}${what.length > 3 ? ` and ${what.length - 3} more` : ''}` : ''),
      app && app !== requestor ? h('p', { class: 'muted small' }, `Using ${names.get(app.key) || APPS[app.key] || `the app ${app.label}`}`) : null,
      btg ? h('p', { class: 'small' }, 'This was an emergency access: the practitioner declared an emergency, and the server recorded it on chain before serving it.') : null,
      h('div', { class: 'event-verify' }, check, status));
    check.addEventListener('click', () => verifyInto(event, check, status));
    item.verify = () => verifyInto(event, check, status);
    return item;
  }

  async function verifyInto(event, button, status) {
    await busy(button, 'Checking', async () => {
      replace(status, 'Checking the proof…');
      status.className = 'verify';
      try {
        const result = await verifyAuditEvent(event.id);
        if (result.state === 'anchored') {
          status.className = 'verify anchored';
          replace(status, h('span', { class: 'badge ok' }, '✓'), ` Anchored in block ${result.block}`,
            h('span', { class: 'muted small' }, ` — recomputed here from the event, ${result.proofLength}-step proof to root ${result.root.slice(0, 10)}…, found on chain ${result.chainId}`));
        } else if (result.state === 'pending') {
          status.className = 'verify pending';
          replace(status, `Not anchored yet${result.expected ? ` (expected by ${formatDate(result.expected, true)})` : ''}.`);
        } else {
          status.className = 'verify failed';
          replace(status, h('span', { class: 'badge denied' }, '✗'), ` Verification failed: ${result.reason}.`);
        }
      } catch (e) {
        status.className = 'verify failed';
        replace(status, `Could not be checked: ${e.message}`);
      }
    });
  }

  function render() {
    const shown = events.filter((e) => mine.checked || !(e.agent || []).some((a) => a.requestor && a.who && a.who.reference === self));
    replace(list, shown.map(rowFor));
    if (!shown.length) list.append(h('li', { class: 'empty' }, events.length ? 'Only your own activity so far. Tick “Show my own activity” to see it.' : 'Nobody has read your record yet.'));
    return shown;
  }

  let round = 0;
  async function load() {
    if (!next) return;
    round += 1;
    const mine = round;
    try {
      const bundle = await api.get(next);
      if (!context.alive()) return;
      events.push(...(bundle.entry || []).map((e) => e.resource).filter((r) => r && r.resourceType === 'AuditEvent'));
      const link = (bundle.link || []).find((l) => l.relation === 'next');
      next = link ? link.url : null;
      more.hidden = !next;
      say(line, `${events.length} events${next ? ' so far' : ''}, newest first.`);
      render();
      // Check the others' events on their own, one after another.
      for (const item of [...list.querySelectorAll('li.event')].slice(0, 20)) {
        if (!context.alive() || mine !== round) return;
        await item.verify();
      }
    } catch (e) {
      say(line, `The events could not be loaded: ${e.message}`, 'error');
    }
  }

  mine.addEventListener('change', render);
  more.addEventListener('click', () => busy(more, 'Loading', load));
  verifyAll.addEventListener('click', () => busy(verifyAll, 'Checking', async () => {
    for (const item of list.querySelectorAll('li.event')) {
      if (!context.alive()) return;
      await item.verify();
    }
  }));
  const reload = h('button', { type: 'button' }, 'Refresh');
  reload.addEventListener('click', () => busy(reload, 'Refreshing', async () => {
    events.length = 0;
    next = `AuditEvent?patient=${encodeURIComponent(self)}&_sort=-date&_count=${PAGE}`;
    await load();
  }));

  replace(main,
    h('h1', {}, 'Who read my data'),
    h('p', { class: 'lead' }, 'Every access to your record is recorded, and every record is anchored on the blockchain. Each event below is checked in your browser: its fingerprint is recomputed here and found on chain, so nobody can change or hide it afterwards.'),
    h('div', { class: 'toolbar' },
      h('div', { class: 'check' }, mine, h('label', { for: 'show-mine' }, 'Show my own activity')),
      reload, verifyAll),
    line,
    list,
    more,
    loading('Loading events'));
  const spinner = main.lastChild;
  granteeNames().then((map) => { names = map; }).finally(() => load().finally(() => spinner.remove()));
}
