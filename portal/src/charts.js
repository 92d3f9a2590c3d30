// Vital signs and lab values over time as SVG line charts, each with a text alternative (a
// description for screen readers and a table of every value). Colours and sizes come from CSS
// classes and SVG attributes: the portal's CSP allows no inline style.

import { formatDate, h, s, uid } from './dom.js';
import { conceptText } from './fhirtext.js';

// LOINC codes in the order people look for them; other numeric series follow, by name.
const PREFERRED = [
  '85354-9', // blood pressure panel
  '8867-4', // heart rate
  '29463-7', // body weight
  '39156-5', // BMI
  '4548-4', // HbA1c
  '2339-0', // glucose
  '2345-7', // glucose (serum)
  '13457-7', // LDL cholesterol
  '2093-3', // cholesterol
  '8310-5', // body temperature
  '9279-1', // respiratory rate
  '59408-5', // oxygen saturation
  '2708-6', // oxygen saturation
  '8302-2', // body height
];

const MAX_CHARTS = 8;

// Names people use for the common codes (the coded display is kept for the others).
const FRIENDLY = {
  '85354-9': 'Blood pressure',
  '8867-4': 'Heart rate',
  '29463-7': 'Body weight',
  '39156-5': 'Body mass index',
  '4548-4': 'HbA1c (long-term blood sugar)',
  '2339-0': 'Blood glucose',
  '2345-7': 'Blood glucose',
  '13457-7': 'LDL cholesterol',
  '2093-3': 'Total cholesterol',
  '8310-5': 'Body temperature',
  '9279-1': 'Breathing rate',
  '59408-5': 'Oxygen saturation',
  '2708-6': 'Oxygen saturation',
  '8302-2': 'Height',
  '8480-6': 'Systolic',
  '8462-4': 'Diastolic',
};

function codeKey(concept) {
  const codings = (concept && concept.coding) || [];
  const loinc = codings.find((c) => c.system === 'http://loinc.org' && c.code);
  if (loinc) return loinc.code;
  if (codings[0] && codings[0].code) return `${codings[0].system || ''}|${codings[0].code}`;
  return conceptText(concept);
}

function when(o) {
  const value = o.effectiveDateTime || o.effectiveInstant || (o.effectivePeriod && o.effectivePeriod.start) || o.issued;
  const time = value ? Date.parse(value.length === 10 ? `${value}T00:00:00Z` : value) : NaN;
  return Number.isNaN(time) ? null : { time, value };
}

/**
 * Numeric series from Observations: one chart per code, one line per component (blood
 * pressure: systolic and diastolic). Only codes measured at least twice are charted.
 */
export function seriesFromObservations(observations) {
  const charts = new Map();
  for (const o of observations) {
    const at = when(o);
    if (!at || o.status === 'entered-in-error') continue;
    const key = codeKey(o.code);
    if (!key) continue;
    const lines = [];
    if (o.valueQuantity && typeof o.valueQuantity.value === 'number') {
      lines.push({ name: FRIENDLY[key] || conceptText(o.code), quantity: o.valueQuantity });
    } else if (Array.isArray(o.component)) {
      for (const c of o.component) {
        if (c.valueQuantity && typeof c.valueQuantity.value === 'number') {
          lines.push({ name: FRIENDLY[codeKey(c.code)] || conceptText(c.code), quantity: c.valueQuantity });
        }
      }
    }
    if (!lines.length) continue;
    if (!charts.has(key)) charts.set(key, { key, title: FRIENDLY[key] || conceptText(o.code) || key, unit: '', lines: new Map() });
    const chart = charts.get(key);
    for (const line of lines) {
      const unit = line.quantity.unit || line.quantity.code || '';
      chart.unit = chart.unit || unit;
      if (!chart.lines.has(line.name)) chart.lines.set(line.name, []);
      chart.lines.get(line.name).push({ time: at.time, date: at.value, value: line.quantity.value });
    }
  }
  const result = [...charts.values()]
    .map((chart) => ({
      ...chart,
      lines: [...chart.lines.entries()].map(([name, points]) => ({ name, points: points.sort((a, b) => a.time - b.time) })),
    }))
    .filter((chart) => chart.lines.some((line) => line.points.length >= 2));
  const rank = (chart) => {
    const i = PREFERRED.indexOf(chart.key);
    return i === -1 ? PREFERRED.length : i;
  };
  result.sort((a, b) => rank(a) - rank(b) || a.title.localeCompare(b.title));
  return result.slice(0, MAX_CHARTS);
}

function niceRange(min, max) {
  if (min === max) {
    const pad = Math.abs(min) * 0.1 || 1;
    return [min - pad, max + pad];
  }
  const pad = (max - min) * 0.1;
  return [min - pad, max + pad];
}

function round(value) {
  const magnitude = Math.abs(value);
  const digits = magnitude >= 100 ? 0 : magnitude >= 10 ? 1 : 2;
  return Number(value.toFixed(digits));
}

/** One chart: a figure with the SVG (role img, title and description) and a table. */
export function chartFigure(chart) {
  const width = 400;
  const height = 200;
  const left = 44;
  const right = 14;
  const top = 12;
  const bottom = chart.lines.length > 1 ? 46 : 28;
  const all = chart.lines.flatMap((line) => line.points);
  const minT = Math.min(...all.map((p) => p.time));
  const maxT = Math.max(...all.map((p) => p.time));
  const [minV, maxV] = niceRange(Math.min(...all.map((p) => p.value)), Math.max(...all.map((p) => p.value)));
  const x = (t) => left + (maxT === minT ? (width - left - right) / 2 : ((t - minT) / (maxT - minT)) * (width - left - right));
  const y = (v) => top + (1 - (v - minV) / (maxV - minV)) * (height - top - bottom);
  const titleId = uid('chart-title');
  const descId = uid('chart-desc');

  const latest = chart.lines.map((line) => {
    const last = line.points[line.points.length - 1];
    return `${chart.lines.length > 1 ? `${line.name} ` : ''}${last.value}`;
  }).join(', ');
  const values = all.map((p) => p.value);
  const description = `${chart.title}: ${all.length} measurements from ${formatDate(new Date(minT).toISOString())} to ${formatDate(new Date(maxT).toISOString())}. `
    + `Latest ${latest} ${chart.unit}. Lowest ${Math.min(...values)}, highest ${Math.max(...values)} ${chart.unit}.`;

  const svg = s('svg', {
    class: 'chart', viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-labelledby': `${titleId} ${descId}`, focusable: 'false',
  }, s('title', { id: titleId }, `${chart.title} over time`), s('desc', { id: descId }, description));

  // Grid lines and the value axis: three ticks.
  for (const fraction of [0, 0.5, 1]) {
    const value = minV + fraction * (maxV - minV);
    const yy = y(value);
    svg.append(
      s('line', { class: 'grid', x1: left, x2: width - right, y1: yy, y2: yy }),
      s('text', { class: 'tick', x: left - 6, y: yy + 4, 'text-anchor': 'end' }, String(round(value))),
    );
  }
  // The time axis: the first, middle and last dates.
  const dateTicks = maxT === minT ? [minT] : [minT, (minT + maxT) / 2, maxT];
  dateTicks.forEach((t, i) => {
    const anchor = dateTicks.length === 1 ? 'middle' : i === 0 ? 'start' : i === dateTicks.length - 1 ? 'end' : 'middle';
    svg.append(s('text', { class: 'tick', x: x(t), y: height - bottom + 17, 'text-anchor': anchor }, formatDate(new Date(t).toISOString())));
  });
  svg.append(s('line', { class: 'axis', x1: left, x2: width - right, y1: height - bottom, y2: height - bottom }));

  chart.lines.forEach((line, i) => {
    const points = line.points.map((p) => `${x(p.time).toFixed(1)},${y(p.value).toFixed(1)}`).join(' ');
    svg.append(s('polyline', { class: `line series-${i % 3}`, points, fill: 'none' }));
    for (const p of line.points) {
      svg.append(s('circle', { class: `dot series-${i % 3}`, cx: x(p.time).toFixed(1), cy: y(p.value).toFixed(1), r: 3 },
        s('title', {}, `${line.name}: ${p.value} ${chart.unit} on ${formatDate(p.date)}`)));
    }
  });
  if (chart.lines.length > 1) {
    chart.lines.forEach((line, i) => {
      const lx = left + i * 120;
      svg.append(
        s('line', { class: `line series-${i % 3}`, x1: lx, x2: lx + 18, y1: height - 8, y2: height - 8 }),
        s('text', { class: 'tick', x: lx + 24, y: height - 4 }, line.name.replace(/ blood pressure$/i, '')),
      );
    });
  }

  // The same values as a table (the text alternative a screen reader or a person can scan).
  const rows = new Map();
  chart.lines.forEach((line, i) => {
    for (const p of line.points) {
      if (!rows.has(p.time)) rows.set(p.time, { date: p.date, values: [] });
      rows.get(p.time).values[i] = p.value;
    }
  });
  const table = h('table', { class: 'values' },
    h('caption', { class: 'visually-hidden' }, `${chart.title} values`),
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Date'), chart.lines.map((line) => h('th', { scope: 'col' }, `${line.name}${chart.unit ? ` (${chart.unit})` : ''}`)))),
    h('tbody', {}, [...rows.entries()].sort((a, b) => b[0] - a[0]).map(([, row]) => h('tr', {},
      h('td', {}, formatDate(row.date)),
      chart.lines.map((_, i) => h('td', {}, row.values[i] === undefined ? '—' : String(row.values[i]))),
    ))));

  return h('figure', { class: 'chart-card' },
    h('figcaption', {}, h('strong', {}, chart.title), chart.unit ? h('span', { class: 'muted' }, ` (${chart.unit})`) : null,
      h('span', { class: 'latest' }, `Latest: ${latest} ${chart.unit}`)),
    svg,
    h('details', {}, h('summary', {}, 'All values as a table', h('span', { class: 'visually-hidden' }, ` (${chart.title})`)), table));
}
