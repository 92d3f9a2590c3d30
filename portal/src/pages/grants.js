// "Who may see my record": the patient's grants (active, expired, revoked, each with its
// transaction on chain), granting access with a plain summary of exactly what will be signed,
// revoking in one click plus a signature, and answering access requests.

import { busy, field, formatDate, h, loading, replace, say, statusLine, uid } from '../dom.js';
import { searchAll } from '../fhir.js';
import { GRANTABLE_TYPES, typeLabel } from '../fhirtext.js';
import {
  TX_SYSTEM, REVOCATION_TX_SYSTEM, actorOf, answerRequest, draftConsent, endOf, grantState,
  granteeNames, identifierValue, labelFor, prepare, requestDays, requestReason, requesterOf,
  revoke, searchGrantees, signAndGrant, typesOf,
} from '../grants.js';
import { currentWallet } from '../keys.js';

const STATE_LABEL = { active: 'Active', expired: 'Expired', revoked: 'Revoked', proposed: 'Requested' };

function typesText(types) {
  return types.map(typeLabel).join(', ');
}

function endOfDay(dateText) {
  return new Date(`${dateText}T23:59:59`).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

function dateInput(daysAhead) {
  const date = new Date(Date.now() + daysAhead * 86_400_000);
  return `${date.getFullYear()}-${String(date.getMonth() + 1).padStart(2, '0')}-${String(date.getDate()).padStart(2, '0')}`;
}

function shortHash(hash) {
  return hash ? `${hash.slice(0, 10)}…${hash.slice(-8)}` : '';
}

/** Checks the typed data the server prepared against what the patient chose. */
function mismatches(parsed, types, endIso) {
  const problems = [];
  const message = parsed.message || {};
  if (parsed.primaryType !== 'Grant') problems.push(`the message is a ${parsed.primaryType}, not a Grant`);
  const signedTypes = (message.resourceTypes || []).slice().sort().join(',');
  const chosen = (types.includes('*') ? ['*'] : types).slice().sort().join(',');
  if (signedTypes !== chosen) problems.push(`the record types (${signedTypes}) differ from your choice`);
  if (Number(message.expiry) !== Math.floor(Date.parse(endIso) / 1000)) problems.push('the end date differs from your choice');
  if (Number(message.actions) !== 1) problems.push('it grants more than reading');
  return problems;
}

/** The human-readable summary of exactly what will be signed. */
function signingSummary(grantee, types, endIso, parsed) {
  const domain = parsed.domain || {};
  const message = parsed.message || {};
  return h('div', { class: 'summary', 'data-testid': 'grant-summary' },
    h('h3', {}, 'You are about to sign this grant'),
    h('dl', { class: 'readable' },
      h('dt', {}, 'Who'), h('dd', {}, `${grantee.label} (${grantee.kind || 'grantee'}${grantee.reference ? `, ${grantee.reference}` : `, app ${grantee.clientId}`})`),
      h('dt', {}, 'May read'), h('dd', {}, typesText(types.length ? types : ['*'])),
      h('dt', {}, 'Until'), h('dd', {}, `${formatDate(endIso, true)} (then it ends by itself)`),
      h('dt', {}, 'May change anything'), h('dd', {}, 'No: reading only'),
      h('dt', {}, 'Signed for'), h('dd', {}, `${domain.name || ''} ${domain.version ? `v${domain.version}` : ''}, contract `,
        h('span', { class: 'mono' }, domain.verifyingContract || ''), ` on chain ${domain.chainId}`),
      h('dt', {}, 'Signature valid'), h('dd', {}, `once (nonce ${message.nonce}), until ${formatDate(new Date(Number(message.deadline) * 1000).toISOString(), true)}`)),
    h('details', {}, h('summary', {}, 'The exact typed data (EIP-712)'), h('pre', { class: 'json', tabindex: '0' }, JSON.stringify(parsed, null, 2))));
}

export function grantsPage(main, context) {
  const { session } = context;
  const patient = session.patient;
  const listLine = statusLine();
  const requestsBox = h('section', { class: 'card', 'aria-labelledby': 'requests-title' });
  const grantsBox = h('section', { class: 'card', 'aria-labelledby': 'grants-title' });
  const formBox = h('section', { class: 'card', 'aria-labelledby': 'grant-title' });
  let names = new Map();

  function needWallet(line) {
    if (currentWallet()) return true;
    say(line, 'Your key is needed to sign. Load or create it on the “My wallet” page first.', 'error');
    return false;
  }

  async function refresh() {
    replace(grantsBox, h('h2', { id: 'grants-title' }, 'Who may see my record'), listLine, loading('Loading your grants'));
    replace(requestsBox, h('h2', { id: 'requests-title' }, 'Access requests'), loading('Loading requests'));
    let consents;
    try {
      [names, consents] = await Promise.all([granteeNames(), searchAll(`Consent?patient=${encodeURIComponent(`Patient/${patient}`)}&_count=200`)]);
    } catch (e) {
      replace(grantsBox, h('h2', { id: 'grants-title' }, 'Who may see my record'), h('p', { class: 'status error', role: 'alert' }, e.message));
      replace(requestsBox, h('h2', { id: 'requests-title' }, 'Access requests'));
      return;
    }
    if (!context.alive()) return;
    const grants = consents.filter((c) => c.status !== 'proposed' && identifierValue(c, TX_SYSTEM));
    const order = { active: 0, expired: 1, revoked: 2 };
    grants.sort((a, b) => (order[grantState(a)] ?? 3) - (order[grantState(b)] ?? 3) || String(endOf(b)).localeCompare(String(endOf(a))));
    renderGrants(grants);
    let requests = consents.filter((c) => c.status === 'proposed');
    try {
      const pending = await searchAll(`Consent?patient=${encodeURIComponent(`Patient/${patient}`)}&status=proposed&_count=100`);
      const seen = new Set(requests.map((r) => r.id));
      requests = requests.concat(pending.filter((r) => r.status === 'proposed' && !seen.has(r.id)));
    } catch {
      // Listed with the grants already, when the server keeps them there.
    }
    if (context.alive()) renderRequests(requests);
  }

  function renderGrants(grants) {
    const rows = grants.map((grant) => {
      const state = grantState(grant);
      const actor = actorOf(grant);
      const tx = identifierValue(grant, TX_SYSTEM);
      const revokedTx = identifierValue(grant, REVOCATION_TX_SYSTEM);
      const line = statusLine();
      const revokeButton = state === 'active' ? h('button', { type: 'button', class: 'danger' }, 'Revoke') : null;
      if (revokeButton) {
        revokeButton.setAttribute('aria-label', `Revoke access of ${labelFor(actor, names)}`);
        revokeButton.addEventListener('click', () => {
          if (!needWallet(line)) return;
          busy(revokeButton, 'Revoking', async () => {
            try {
              await revoke(grant);
              say(listLine, `Access of ${labelFor(actor, names)} was revoked.`);
              await refresh();
              grantsBox.querySelector('h2').focus();
            } catch (e) {
              say(line, `Not revoked: ${e.message}`, 'error');
            }
          });
        });
      }
      return h('li', { class: `grant ${state}`, 'data-grant': grant.id },
        h('div', { class: 'grant-head' },
          h('strong', {}, labelFor(actor, names)),
          h('span', { class: `badge ${state}` }, STATE_LABEL[state] || state)),
        h('p', {}, `May read: ${typesText(typesOf(grant))}`),
        h('p', {}, state === 'expired' ? `Ended ${formatDate(endOf(grant), true)}` : `Until ${formatDate(endOf(grant), true)}`),
        tx ? h('p', { class: 'muted small' }, 'Granted on chain in transaction ', h('span', { class: 'mono', title: tx }, shortHash(tx))) : null,
        revokedTx ? h('p', { class: 'muted small' }, 'Revoked on chain in transaction ', h('span', { class: 'mono', title: revokedTx }, shortHash(revokedTx))) : null,
        line, revokeButton);
    });
    replace(grantsBox,
      h('h2', { id: 'grants-title', tabindex: '-1' }, 'Who may see my record'),
      listLine,
      rows.length ? h('ul', { class: 'grants' }, rows) : h('p', {}, 'Nobody else may read your record: you have granted no access.'));
  }

  function renderRequests(requests) {
    const heading = h('h2', { id: 'requests-title' }, 'Access requests');
    if (!requests.length) {
      replace(requestsBox, heading, h('p', { class: 'muted' }, 'No one is waiting for your answer.'));
      return;
    }
    replace(requestsBox, heading, h('ul', { class: 'grants' }, requests.map((request) => {
      const requester = requesterOf(request);
      const types = typesOf(request);
      const days = requestDays(request);
      const reason = requestReason(request);
      const line = statusLine();
      const approve = h('button', { type: 'button', class: 'primary' }, 'Approve');
      const decline = h('button', { type: 'button' }, 'Decline');
      approve.setAttribute('aria-label', `Approve the request of ${labelFor(requester, names)}`);
      decline.setAttribute('aria-label', `Decline the request of ${labelFor(requester, names)}`);
      approve.addEventListener('click', () => {
        if (!needWallet(line)) return;
        busy(approve, 'Signing the grant', async () => {
          try {
            const end = new Date(Date.now() + days * 86_400_000).toISOString().replace(/\.\d{3}Z$/, 'Z');
            const draft = draftConsent(patient, requester, types, end);
            const { typedData } = await prepare(draft);
            const grant = await signAndGrant(draft, typedData);
            await answerRequest(request, 'approved', grant.id);
            say(listLine, `You granted ${labelFor(requester, names)} what they asked for, until ${formatDate(end, true)}.`);
            await refresh();
          } catch (e) {
            say(line, `Not approved: ${e.message}`, 'error');
          }
        });
      });
      decline.addEventListener('click', () => busy(decline, 'Declining', async () => {
        try {
          await answerRequest(request, 'declined');
          say(listLine, `You declined the request of ${labelFor(requester, names)}.`);
          await refresh();
        } catch (e) {
          say(line, `Not declined: ${e.message}`, 'error');
        }
      }));
      return h('li', { class: 'grant proposed', 'data-request': request.id },
        h('div', { class: 'grant-head' }, h('strong', {}, labelFor(requester, names)), h('span', { class: 'badge proposed' }, 'Asks for access')),
        h('p', {}, `To read: ${typesText(types)}, for ${days} ${days === 1 ? 'day' : 'days'}`),
        reason ? h('p', {}, `Reason given: “${reason}”`) : null,
        line,
        h('div', { class: 'button-row' }, approve, decline));
    })));
  }

  function renderForm() {
    const line = statusLine();
    const nameInput = h('input', { type: 'search', autocomplete: 'off' });
    const choices = h('div', { class: 'choices' });
    const granteeSet = h('fieldset', {}, h('legend', {}, 'Who'),
      field('Find a practitioner, organisation or app by name', nameInput), choices);
    // The chosen grantee outlives the searches (a late answer re-lists, it never un-chooses).
    let chosen = null;
    let searches = 0;
    const keyOf = (grantee) => grantee.reference || `client:${grantee.clientId}`;
    const runSearch = async () => {
      searches += 1;
      const mine = searches;
      replace(choices, loading('Searching'));
      try {
        const found = await searchGrantees(nameInput.value.trim());
        if (mine !== searches || !context.alive()) return;
        if (chosen && !found.some((g) => keyOf(g) === keyOf(chosen))) found.unshift(chosen);
        const group = uid('grantee');
        replace(choices, found.length
          ? h('ul', { class: 'plain options' }, found.map((grantee, i) => {
            const id = `${group}-${i}`;
            const radio = h('input', { type: 'radio', name: group, id, value: String(i), checked: chosen && keyOf(chosen) === keyOf(grantee) });
            radio.addEventListener('change', () => { if (radio.checked) chosen = grantee; });
            return h('li', {}, radio,
              h('label', { for: id }, `${grantee.label} `, h('span', { class: 'muted' }, `(${grantee.kind})`)));
          }))
          : h('p', { class: 'muted' }, 'Nobody by that name.'));
      } catch (e) {
        if (mine === searches) replace(choices, h('p', { class: 'status error', role: 'alert' }, `The search failed: ${e.message}`));
      }
    };
    let searchTimer = null;
    nameInput.addEventListener('input', () => { clearTimeout(searchTimer); searchTimer = setTimeout(runSearch, 250); });

    const everything = h('input', { type: 'checkbox', id: uid('all'), value: '*' });
    const typeBoxes = GRANTABLE_TYPES.map(([type, label]) => {
      const id = uid('type');
      return { type, box: h('input', { type: 'checkbox', id, value: type }), label: h('label', { for: id }, label) };
    });
    everything.addEventListener('change', () => typeBoxes.forEach(({ box }) => { box.disabled = everything.checked; }));
    const typeSet = h('fieldset', {}, h('legend', {}, 'What they may read'),
      h('ul', { class: 'plain options columns' },
        typeBoxes.map(({ box, label }) => h('li', {}, box, label)),
        h('li', { class: 'all' }, everything, h('label', { for: everything.id }, 'Everything in my record'))));

    const until = h('input', { type: 'date', value: dateInput(30), min: dateInput(1), required: true });
    const review = h('button', { type: 'submit', class: 'primary' }, 'Review what I will sign');
    const summaryBox = h('div', { class: 'review', 'aria-live': 'polite' });
    const form = h('form', { class: 'stack', 'aria-labelledby': 'grant-title' }, granteeSet, typeSet,
      field('Until (the access ends by itself that day at midnight)', until), review);

    form.addEventListener('submit', (event) => {
      event.preventDefault();
      replace(summaryBox);
      if (!chosen) { say(line, 'Choose who gets access.', 'error'); nameInput.focus(); return; }
      const grantee = chosen;
      const types = everything.checked ? ['*'] : typeBoxes.filter(({ box }) => box.checked).map(({ type }) => type);
      if (!types.length) { say(line, 'Choose at least one kind of record, or “Everything in my record”.', 'error'); typeBoxes[0].box.focus(); return; }
      if (!until.value || Date.parse(endOfDay(until.value)) <= Date.now()) { say(line, 'Choose an end date in the future.', 'error'); until.focus(); return; }
      const end = endOfDay(until.value);
      const draft = draftConsent(patient, grantee, types, end);
      busy(review, 'Preparing', async () => {
        try {
          const { typedData, parsed } = await prepare(draft);
          const problems = mismatches(parsed, types, end);
          if (problems.length) {
            say(line, `The server prepared something other than what you chose (${problems.join('; ')}). Nothing was signed.`, 'error');
            return;
          }
          say(line, '');
          const sign = h('button', { type: 'button', class: 'primary' }, 'Sign and grant');
          const cancel = h('button', { type: 'button', onclick: () => { replace(summaryBox); review.focus(); } }, 'Cancel');
          sign.addEventListener('click', () => {
            if (!needWallet(line)) return;
            busy(sign, 'Signing', async () => {
              try {
                const grant = await signAndGrant(draft, typedData);
                replace(summaryBox);
                form.reset();
                chosen = null;
                runSearch();
                until.value = dateInput(30);
                typeBoxes.forEach(({ box }) => { box.disabled = false; });
                const tx = identifierValue(grant, TX_SYSTEM);
                say(listLine, `Granted: ${grantee.label} may read ${typesText(types)} until ${formatDate(end, true)}${tx ? ` (transaction ${shortHash(tx)})` : ''}.`);
                await refresh();
                grantsBox.querySelector('h2').focus();
              } catch (e) {
                say(line, `Not granted: ${e.message}`, 'error');
              }
            });
          });
          const summary = signingSummary(grantee, types, end, parsed);
          replace(summaryBox, summary, h('div', { class: 'button-row' }, sign, cancel));
          summary.querySelector('h3').setAttribute('tabindex', '-1');
          summary.querySelector('h3').focus();
        } catch (e) {
          say(line, `This grant cannot be prepared: ${e.message}`, 'error');
        }
      });
    });
    replace(formBox, h('h2', { id: 'grant-title' }, 'Grant access'),
      h('p', {}, 'Nothing is shared until you sign with your key. You can revoke it at any time.'),
      line, form, summaryBox);
    runSearch();
  }

  replace(main,
    h('h1', {}, 'Who may see my record'),
    h('p', { class: 'lead' }, 'Your grants live on the blockchain, signed with your key: the server cannot share what you did not sign.'),
    h('div', { class: 'columns-2' }, h('div', {}, grantsBox, requestsBox), formBox));
  renderForm();
  refresh();
}
