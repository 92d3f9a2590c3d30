// FHIR values as words people read: codes by their display, dates, quantities, references.

import { formatDate } from './dom.js';

/** The groups of "My record", the way people think of a record. */
export const GROUPS = [
  { key: 'conditions', label: 'Conditions', types: ['Condition'] },
  { key: 'medications', label: 'Medications', types: ['MedicationRequest', 'MedicationStatement'] },
  { key: 'allergies', label: 'Allergies', types: ['AllergyIntolerance'] },
  { key: 'immunizations', label: 'Immunizations', types: ['Immunization'] },
  { key: 'encounters', label: 'Encounters', types: ['Encounter'] },
  { key: 'observations', label: 'Observations', types: ['Observation'] },
  { key: 'documents', label: 'Documents', types: ['DocumentReference', 'DiagnosticReport'] },
];

/** Record types a patient may grant, with the words the portal shows for them. */
export const GRANTABLE_TYPES = [
  ['Observation', 'Observations (vital signs, lab results)'],
  ['Condition', 'Conditions'],
  ['MedicationRequest', 'Medications (prescriptions)'],
  ['MedicationStatement', 'Medications (statements)'],
  ['AllergyIntolerance', 'Allergies'],
  ['Immunization', 'Immunizations'],
  ['Encounter', 'Encounters (visits)'],
  ['DiagnosticReport', 'Diagnostic reports'],
  ['DocumentReference', 'Documents'],
  ['Procedure', 'Procedures'],
  ['Patient', 'Demographics (name, birth date, address)'],
];

export function typeLabel(type) {
  if (type === '*') return 'Everything in the record';
  const found = GRANTABLE_TYPES.find(([t]) => t === type);
  return found ? found[1] : type;
}

export function codingText(coding) {
  if (!coding) return '';
  return coding.display || coding.code || '';
}

export function conceptText(concept) {
  if (!concept) return '';
  if (concept.text) return concept.text;
  const coding = (concept.coding || []).find((c) => c.display) || (concept.coding || [])[0];
  return codingText(coding);
}

export function referenceText(reference) {
  if (!reference) return '';
  if (reference.display) return reference.display;
  if (reference.reference) return reference.reference;
  if (reference.identifier) return reference.identifier.value || '';
  return '';
}

export function quantityText(q) {
  if (!q || q.value === undefined) return '';
  const unit = q.unit || q.code || '';
  return unit ? `${q.value} ${unit}` : String(q.value);
}

export function periodText(p) {
  if (!p) return '';
  const start = formatDate(p.start);
  const end = formatDate(p.end);
  if (start && end) return start === end ? start : `${start} – ${end}`;
  if (start) return `from ${start}`;
  return end ? `until ${end}` : '';
}

/** An Observation's value: a quantity, a code, text, or its components (blood pressure). */
export function observationValue(o) {
  if (o.valueQuantity) return quantityText(o.valueQuantity);
  if (o.valueCodeableConcept) return conceptText(o.valueCodeableConcept);
  if (o.valueString !== undefined) return String(o.valueString);
  if (o.valueBoolean !== undefined) return o.valueBoolean ? 'yes' : 'no';
  if (o.valueInteger !== undefined) return String(o.valueInteger);
  if (Array.isArray(o.component) && o.component.length) {
    const quantities = o.component.map((c) => c.valueQuantity).filter(Boolean);
    if (quantities.length === o.component.length && quantities.length > 1) {
      const units = new Set(quantities.map((q) => q.unit || q.code || ''));
      if (units.size === 1) return `${quantities.map((q) => q.value).join('/')} ${[...units][0]}`.trim();
    }
    return o.component.map((c) => `${conceptText(c.code)}: ${c.valueQuantity ? quantityText(c.valueQuantity) : conceptText(c.valueCodeableConcept) || c.valueString || ''}`).join('; ');
  }
  if (o.dataAbsentReason) return `not available (${conceptText(o.dataAbsentReason)})`;
  return '';
}

/** The date a resource is about (when it happened), for sorting newest first. */
export function clinicalDate(r) {
  const pick = (...values) => values.find((v) => typeof v === 'string' && v);
  switch (r.resourceType) {
    case 'Observation':
      return pick(r.effectiveDateTime, r.effectiveInstant, r.effectivePeriod && r.effectivePeriod.start, r.issued);
    case 'Condition':
      return pick(r.recordedDate, r.onsetDateTime, r.onsetPeriod && r.onsetPeriod.start);
    case 'MedicationRequest':
      return pick(r.authoredOn);
    case 'MedicationStatement':
      return pick(r.effectiveDateTime, r.effectivePeriod && r.effectivePeriod.start, r.dateAsserted);
    case 'AllergyIntolerance':
      return pick(r.recordedDate, r.onsetDateTime);
    case 'Immunization':
      return pick(r.occurrenceDateTime, r.recorded);
    case 'Encounter':
      return pick(r.period && r.period.start, r.period && r.period.end);
    case 'DocumentReference':
      return pick(r.date, r.context && r.context.period && r.context.period.start);
    case 'DiagnosticReport':
      return pick(r.effectiveDateTime, r.effectivePeriod && r.effectivePeriod.start, r.issued);
    case 'Procedure':
      return pick(r.performedDateTime, r.performedPeriod && r.performedPeriod.start);
    default:
      return pick(r.meta && r.meta.lastUpdated);
  }
}

/** A one-line title and a one-line detail for a resource in a list. */
export function summary(r) {
  switch (r.resourceType) {
    case 'Observation':
      return { title: conceptText(r.code) || 'Observation', detail: observationValue(r) };
    case 'Condition':
      return { title: conceptText(r.code) || 'Condition', detail: [conceptText(r.clinicalStatus), conceptText(r.severity)].filter(Boolean).join(', ') };
    case 'MedicationRequest':
    case 'MedicationStatement':
      return {
        title: conceptText(r.medicationCodeableConcept) || referenceText(r.medicationReference) || 'Medication',
        detail: [r.status, ((r.dosageInstruction || r.dosage || [])[0] || {}).text].filter(Boolean).join(' · '),
      };
    case 'AllergyIntolerance':
      return {
        title: conceptText(r.code) || 'Allergy',
        detail: [r.criticality && `criticality ${r.criticality}`, ((r.reaction || [])[0] || { manifestation: [] }).manifestation.map(conceptText).join(', ')].filter(Boolean).join(' · '),
      };
    case 'Immunization':
      return { title: conceptText(r.vaccineCode) || 'Immunization', detail: r.status || '' };
    case 'Encounter':
      return {
        title: conceptText((r.type || [])[0]) || codingText(r.class) || 'Encounter',
        detail: [(r.reasonCode || []).map(conceptText).join(', '), referenceText(r.serviceProvider)].filter(Boolean).join(' · '),
      };
    case 'DocumentReference':
      return {
        title: conceptText(r.type) || r.description || 'Document',
        detail: [r.description, ((r.content || [])[0] || { attachment: {} }).attachment.title].filter(Boolean).join(' · '),
      };
    case 'DiagnosticReport':
      return { title: conceptText(r.code) || 'Report', detail: r.conclusion || r.status || '' };
    case 'Procedure':
      return { title: conceptText(r.code) || 'Procedure', detail: r.status || '' };
    case 'Patient':
      return { title: patientName(r), detail: [r.gender, r.birthDate && `born ${formatDate(r.birthDate)}`].filter(Boolean).join(', ') };
    default:
      return { title: r.resourceType, detail: r.id || '' };
  }
}

export function humanName(name) {
  if (!name) return '';
  if (name.text) return name.text;
  return [...(name.prefix || []), ...(name.given || []), name.family].filter(Boolean).join(' ');
}

export function patientName(p) {
  const name = (p.name || []).find((n) => n.use === 'official') || (p.name || [])[0];
  return humanName(name) || `Patient ${p.id}`;
}

/** Words for an element name: "effectiveDateTime" → "Effective date time". */
export function humanKey(key) {
  const words = key.replace(/([a-z0-9])([A-Z])/g, '$1 $2').replace(/([A-Z]+)([A-Z][a-z])/g, '$1 $2').toLowerCase();
  return words.charAt(0).toUpperCase() + words.slice(1);
}

/**
 * A FHIR value in words when its shape is a known datatype (CodeableConcept, Coding,
 * Quantity, Reference, Period, HumanName, Address, primitives); null otherwise.
 */
export function valueText(key, value) {
  if (value === null || value === undefined) return '';
  if (typeof value === 'boolean') return value ? 'yes' : 'no';
  if (typeof value === 'number') return String(value);
  if (typeof value === 'string') {
    if (/^\d{4}-\d{2}-\d{2}(T|$)/.test(value) && /date|time|issued|recorded|authored|instant|start|end|birth/i.test(key)) {
      return formatDate(value, value.length > 10);
    }
    return value;
  }
  if (Array.isArray(value)) {
    const parts = value.map((v) => valueText(key, v));
    return parts.every((p) => p !== null) ? parts.filter(Boolean).join('; ') : null;
  }
  if (typeof value === 'object') {
    if ('coding' in value || ('text' in value && Object.keys(value).length === 1)) return conceptText(value);
    if ('system' in value && 'code' in value && !('value' in value)) return codingText(value);
    if ('value' in value && typeof value.value === 'number') return quantityText(value);
    if ('reference' in value || 'display' in value) return referenceText(value);
    if (('start' in value || 'end' in value) && Object.keys(value).every((k) => k === 'start' || k === 'end')) return periodText(value);
    if ('family' in value || 'given' in value) return humanName(value);
    if ('line' in value || 'city' in value) return [...(value.line || []), value.city, value.postalCode, value.country].filter(Boolean).join(', ');
    if ('contentType' in value) return [value.title, value.contentType].filter(Boolean).join(' — ');
  }
  return null;
}
