// "My record": the record in groups (newest first, searchable, paged), vital signs and lab
// values as charts, any resource as a readable view and its raw JSON, and the whole record
// (`$everything`) as a file. A practitioner sees the same view, limited to what was granted.

import { chartFigure, seriesFromObservations } from '../charts.js';
import { busy, download, formatDate, h, loading, replace, say, statusLine, uid } from '../dom.js';
import { api, searchAll } from '../fhir.js';
import { GROUPS, clinicalDate, humanKey, summary, valueText } from '../fhirtext.js';

const PAGE_SIZE = 10;
const SKIP_KEYS = new Set(['resourceType', 'id', 'meta', 'text', 'contained']);

/** The resources of one type in the patient's record. */
async function fetchType(patient, type) {
  const sort = type === 'Observation' ? '&_sort=-date' : '';
  const subject = type === 'Patient' ? `_id=${encodeURIComponent(patient)}` : `patient=${encodeURIComponent(patient)}`;
  return searchAll(`${type}?${subject}${sort}&_count=200`, 10);
}

function byDateDesc(a, b) {
  const da = clinicalDate(a) || '';
  const db = clinicalDate(b) || '';
  return db.localeCompare(da);
}

/** The searchable text of a resource in a list. */
function haystack(resource) {
  const { title, detail } = summary(resource);
  const date = clinicalDate(resource);
  return `${title} ${detail} ${date || ''} ${formatDate(date)} ${resource.status || ''}`.toLowerCase();
}

/** A resource in words: a definition list of its elements, nested where they nest. */
export function readable(resource, key = '') {
  if (resource === null || resource === undefined) return '';
  const text = valueText(key, resource);
  if (text !== null) return text;
  if (Array.isArray(resource)) {
    return h('ul', { class: 'plain' }, resource.map((item) => h('li', {}, readable(item, key))));
  }
  const dl = h('dl', { class: 'readable' });
  for (const [name, value] of Object.entries(resource)) {
    if (SKIP_KEYS.has(name) || name.startsWith('_') || name === 'extension' || name === 'modifierExtension') continue;
    dl.append(h('dt', {}, humanKey(name)), h('dd', {}, readable(value, name)));
  }
  return dl;
}

/** One resource: its readable view and its raw JSON. */
export function resourceDetail(resource, onBack) {
  const { title, detail } = summary(resource);
  const heading = h('h2', { tabindex: '-1', class: 'detail-title', id: uid('detail') }, title);
  const section = h('section', { class: 'detail', 'aria-labelledby': heading.id },
    h('button', { type: 'button', class: 'link back', onclick: onBack }, '← Back to the list'),
    heading,
    h('p', { class: 'muted' }, [resource.resourceType, clinicalDate(resource) && ` · ${formatDate(clinicalDate(resource), true)}`, detail && ` · ${detail}`]),
    readable(resource),
    h('details', { class: 'raw' }, h('summary', {}, 'Raw JSON (FHIR R4)'),
      h('pre', { class: 'json', tabindex: '0', 'aria-label': `Raw JSON of ${title}` }, JSON.stringify(resource, null, 2))));
  return { section, heading };
}

/**
 * The grouped record view. `groups`: the groups to show (default all); `charts`: whether to
 * chart Observations; `downloadable`: the "Download my record" button.
 */
export function recordView(container, { patient, groups = GROUPS, charts = true, downloadable = false, alive = () => true }) {
  const line = statusLine();
  const chartArea = h('section', { class: 'charts', 'aria-labelledby': 'charts-title' },
    h('h2', { id: 'charts-title' }, 'Vital signs and lab results over time'), loading('Loading measurements'));
  const groupNav = h('div', { class: 'group-nav', role: 'group', 'aria-label': 'Record groups' });
  const groupPanel = h('section', { class: 'group-panel', 'aria-live': 'off' });
  const state = { data: new Map(), active: groups[0] && groups[0].key, query: '', page: 0 };

  const toolbar = h('div', { class: 'toolbar' });
  if (downloadable) {
    const button = h('button', { type: 'button', class: 'primary' }, 'Download my record');
    button.addEventListener('click', () => busy(button, 'Preparing your record', async () => {
      try {
        const entries = [];
        let next = `Patient/${encodeURIComponent(patient)}/$everything?_count=1000`;
        for (let pages = 0; next && pages < 50; pages += 1) {
          const bundle = await api.get(next);
          entries.push(...(bundle.entry || []).filter((e) => !e.search || e.search.mode !== 'outcome'));
          const link = (bundle.link || []).find((l) => l.relation === 'next');
          next = link ? link.url : null;
        }
        const bundle = {
          resourceType: 'Bundle',
          type: 'searchset',
          timestamp: new Date().toISOString(),
          total: entries.length,
          entry: entries,
        };
        download(`my-health-record-${new Date().toISOString().slice(0, 10)}.json`, JSON.stringify(bundle, null, 2), 'application/fhir+json');
        say(line, `Your record (${entries.length} resources) was saved as a file.`);
      } catch (e) {
        say(line, `Your record could not be downloaded: ${e.message}`, 'error');
      }
    }));
    toolbar.append(button);
  }

  function groupButtons() {
    replace(groupNav, groups.map((group) => {
      const items = state.data.get(group.key);
      const count = Array.isArray(items) ? ` (${items.length})` : '';
      return h('button', {
        type: 'button',
        class: 'chip',
        'aria-pressed': state.active === group.key ? 'true' : 'false',
        onclick: () => { state.active = group.key; state.query = ''; state.page = 0; groupButtons(); showGroup(true); },
      }, `${group.label}${count}`);
    }));
  }

  function showGroup(focus = false) {
    const group = groups.find((g) => g.key === state.active);
    if (!group) return;
    const items = state.data.get(group.key);
    const title = h('h2', { tabindex: '-1' }, group.label);
    if (items === undefined) {
      replace(groupPanel, title, loading(`Loading ${group.label.toLowerCase()}`));
      return;
    }
    if (items instanceof Error) {
      replace(groupPanel, title, h('p', { class: 'status error', role: 'alert' }, items.message));
      return;
    }
    const searchId = uid('search');
    const search = h('input', { type: 'search', id: searchId, value: state.query, autocomplete: 'off' });
    const results = h('div', { class: 'results' });
    const render = () => {
      const query = state.query.trim().toLowerCase();
      const matches = query ? items.filter((r) => haystack(r).includes(query)) : items;
      const pages = Math.max(1, Math.ceil(matches.length / PAGE_SIZE));
      state.page = Math.min(state.page, pages - 1);
      const shown = matches.slice(state.page * PAGE_SIZE, (state.page + 1) * PAGE_SIZE);
      const list = h('ul', { class: 'items' }, shown.map((resource) => {
        const { title: itemTitle, detail } = summary(resource);
        const date = clinicalDate(resource);
        return h('li', {}, h('button', {
          type: 'button',
          class: 'item',
          onclick: () => openResource(resource),
        }, h('span', { class: 'item-title' }, itemTitle),
        h('span', { class: 'item-meta' }, [date ? formatDate(date) : 'no date', detail && ` · ${detail}`])));
      }));
      const pager = h('nav', { class: 'pager', 'aria-label': `${group.label} pages` },
        h('button', { type: 'button', disabled: state.page === 0, onclick: () => { state.page -= 1; render(); } }, 'Previous'),
        h('span', { 'aria-live': 'polite' }, `Page ${state.page + 1} of ${pages}`),
        h('button', { type: 'button', disabled: state.page >= pages - 1, onclick: () => { state.page += 1; render(); } }, 'Next'));
      replace(results,
        h('p', { class: 'muted', role: 'status' }, matches.length === items.length
          ? `${items.length} ${items.length === 1 ? 'entry' : 'entries'}, newest first`
          : `${matches.length} of ${items.length} match “${state.query.trim()}”`),
        matches.length ? list : h('p', {}, items.length ? 'Nothing matches your search.' : `No ${group.label.toLowerCase()} in this record.`),
        pages > 1 ? pager : null);
    };
    search.addEventListener('input', () => { state.query = search.value; state.page = 0; render(); });
    replace(groupPanel, title,
      h('div', { class: 'field inline' }, h('label', { for: searchId }, `Search ${group.label.toLowerCase()}`), search),
      results);
    render();
    if (focus) title.focus();
  }

  // Opening an entry reads it afresh (`GET Type/id`): the newest version, and a read the
  // patient sees in "Who read my data" like any other (a revoked grant shows here as denied).
  async function openResource(resource) {
    const back = () => { showGroup(); groupPanel.querySelector('h2').focus(); };
    const { title } = summary(resource);
    replace(groupPanel, h('h2', { tabindex: '-1' }, title), loading('Opening'));
    let fresh;
    try {
      fresh = await api.get(`${resource.resourceType}/${encodeURIComponent(resource.id)}`);
    } catch (e) {
      if (!alive()) return;
      const heading = h('h2', { tabindex: '-1' }, title);
      replace(groupPanel,
        h('button', { type: 'button', class: 'link back', onclick: back }, '← Back to the list'),
        heading,
        h('p', { class: 'status error', role: 'alert' }, `This entry cannot be opened. ${e.message}`));
      heading.focus();
      return;
    }
    if (!alive()) return;
    const { section, heading } = resourceDetail(fresh, back);
    replace(groupPanel, section);
    heading.focus();
  }

  replace(container, toolbar, line, charts ? chartArea : null, h('section', { class: 'record', 'aria-label': 'Record' }, groupNav, groupPanel));
  groupButtons();
  showGroup();

  for (const group of groups) {
    Promise.all(group.types.map((type) => fetchType(patient, type)))
      .then((lists) => lists.flat().sort(byDateDesc))
      .catch((e) => e)
      .then((result) => {
        if (!alive()) return;
        state.data.set(group.key, result);
        groupButtons();
        if (state.active === group.key) showGroup();
        if (group.key === 'observations' && charts) renderCharts(result);
      });
  }
  if (charts && !groups.some((g) => g.key === 'observations')) chartArea.remove();

  function renderCharts(observations) {
    const heading = chartArea.querySelector('h2');
    if (observations instanceof Error) {
      replace(chartArea, heading, h('p', { class: 'status error', role: 'alert' }, observations.message));
      return;
    }
    const series = seriesFromObservations(observations);
    replace(chartArea, heading, series.length
      ? h('div', { class: 'chart-grid' }, series.map(chartFigure))
      : h('p', {}, 'No measurements to chart yet.'));
  }
}

export function recordPage(main, context) {
  const { session } = context;
  const body = h('div');
  const who = h('p', { class: 'who-line' });
  replace(main, h('h1', {}, 'My record'),
    h('p', { class: 'lead' }, 'Everything your record holds, newest first. Open an entry to read it in full.'), who, body);
  api.get(`Patient/${encodeURIComponent(session.patient)}`).then((patient) => {
    if (!context.alive()) return;
    const { title, detail } = summary(patient);
    replace(who, h('strong', {}, title), detail ? ` · ${detail}` : '', ' · record id ', h('span', { class: 'mono' }, session.patient),
      h('span', { class: 'muted small' }, ' (a practitioner asks for access with it)'));
  }, () => replace(who, 'Record id ', h('span', { class: 'mono' }, session.patient)));
  recordView(body, { patient: session.patient, downloadable: true, alive: context.alive });
}
