// DOM helpers. Everything a user or the server wrote reaches the page as text nodes or
// attribute values, never as HTML: there is no innerHTML anywhere in the portal.

const SVG_NS = 'http://www.w3.org/2000/svg';

function build(element, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      element.addEventListener(name.slice(2), value);
    } else if (name === 'class') {
      element.setAttribute('class', Array.isArray(value) ? value.filter(Boolean).join(' ') : value);
    } else if (name === 'dataset') {
      Object.assign(element.dataset, value);
    } else if (name === 'value' && 'value' in element) {
      element.value = value;
    } else if (name === 'checked' || name === 'selected' || name === 'disabled') {
      element[name] = Boolean(value);
      if (value) element.setAttribute(name, '');
    } else {
      element.setAttribute(name, value === true ? '' : String(value));
    }
  }
  append(element, children);
  return element;
}

/** Appends children: nodes, strings (as text), arrays of them; null/false are skipped. */
export function append(element, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** `h('p', {class: 'x'}, 'text', child)`: an HTML element. */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element. */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** Replaces an element's children. */
export function replace(element, ...children) {
  element.replaceChildren();
  return append(element, children);
}

let counter = 0;
/** A unique element id with a readable prefix. */
export function uid(prefix = 'id') {
  counter += 1;
  return `${prefix}-${counter}`;
}

/** A labelled form control: the label wraps nothing, it names the control by `for`. */
export function field(label, control, hint) {
  const id = control.id || uid('f');
  control.id = id;
  const children = [h('label', { for: id }, label)];
  if (hint) {
    const hintId = uid('hint');
    control.setAttribute('aria-describedby', hintId);
    children.push(h('p', { class: 'hint', id: hintId }, hint));
  }
  children.push(control);
  return h('div', { class: 'field' }, children);
}

/** A status line: polite announcements for screen readers (`role=status`). */
export function statusLine() {
  return h('p', { class: 'status', role: 'status', 'aria-live': 'polite' });
}

/** Writes a message into a status line; kind `error` makes it an alert. */
export function say(line, message, kind = 'info') {
  line.className = `status ${kind}`;
  if (kind === 'error') line.setAttribute('role', 'alert');
  else line.setAttribute('role', 'status');
  replace(line, message || '');
}

/** A "Loading …" placeholder. */
export function loading(what = 'Loading') {
  return h('p', { class: 'loading', role: 'status' }, h('span', { class: 'spinner', 'aria-hidden': 'true' }), `${what}…`);
}

/**
 * Runs `work` while `button` shows it is busy (disabled, aria-busy, a label saying so);
 * returns what work returned.
 */
export async function busy(button, label, work) {
  const before = button.textContent;
  // A button named more fully than its text (aria-label) says it is busy in its name too: the
  // visible text stays part of the accessible name.
  const named = button.getAttribute('aria-label');
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  button.textContent = `${label}…`;
  if (named) button.setAttribute('aria-label', `${label}…`);
  try {
    return await work();
  } finally {
    button.disabled = false;
    button.removeAttribute('aria-busy');
    button.textContent = before;
    if (named) button.setAttribute('aria-label', named);
  }
}

const dateFormat = new Intl.DateTimeFormat('en-GB', { day: 'numeric', month: 'short', year: 'numeric' });
const timeFormat = new Intl.DateTimeFormat('en-GB', {
  day: 'numeric', month: 'short', year: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
});

/** A FHIR date or dateTime for people: "3 Jan 2024" (a time only when `withTime`). */
export function formatDate(value, withTime = false) {
  if (!value) return '';
  if (/^\d{4}$/.test(value)) return value;
  if (/^\d{4}-\d{2}$/.test(value)) {
    return new Intl.DateTimeFormat('en-GB', { month: 'short', year: 'numeric' }).format(new Date(`${value}-01T00:00:00`));
  }
  const date = new Date(/^\d{4}-\d{2}-\d{2}$/.test(value) ? `${value}T00:00:00` : value);
  if (Number.isNaN(date.getTime())) return value;
  return (withTime && value.length > 10 ? timeFormat : dateFormat).format(date);
}

/** Saves bytes or text as a file the browser downloads (a Blob behind an object URL). */
export function download(filename, content, type) {
  const blob = content instanceof Blob ? content : new Blob([content], { type });
  const url = URL.createObjectURL(blob);
  const link = h('a', { href: url, download: filename, class: 'hidden' });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
