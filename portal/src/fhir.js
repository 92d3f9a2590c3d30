// The FHIR API of this server, with the session's bearer token. A 401 ends the session and
// sends the person back to sign-in with a message; every other failure is an ApiError whose
// message is the OperationOutcome's own words.

import { current, fhirBase, origin } from './auth.js';

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

let onExpired = () => {};

/** What to do when the server says the token is no longer good (401). */
export function whenExpired(handler) {
  onExpired = handler;
}

/** The readable text of an OperationOutcome (or of OAuth's JSON error). */
export function outcomeText(body, status) {
  if (body && body.resourceType === 'OperationOutcome' && Array.isArray(body.issue)) {
    const texts = body.issue
      .map((issue) => issue.diagnostics || (issue.details && issue.details.text) || issue.code)
      .filter(Boolean);
    if (texts.length) return texts.join('; ');
  }
  if (body && (body.error_description || body.error)) return body.error_description || body.error;
  if (body && body.error && body.error.message) return body.error.message;
  return `the server answered HTTP ${status}`;
}

async function request(method, url, body, extraHeaders = {}, authorized = true) {
  const session = current();
  if (!session) {
    onExpired('Please sign in.');
    throw new ApiError(401, 'Not signed in.');
  }
  const headers = { Accept: 'application/fhir+json', ...extraHeaders };
  if (authorized) headers.Authorization = `Bearer ${session.token}`;
  if (body !== undefined) headers['Content-Type'] = headers['Content-Type'] || 'application/fhir+json';
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
      cache: 'no-store',
    });
  } catch (e) {
    throw new ApiError(0, `The server could not be reached (${e.message}).`);
  }
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = null;
  }
  if (response.status === 401) {
    onExpired('Your session has expired. Please sign in again.');
    throw new ApiError(401, 'Your session has expired. Please sign in again.', parsed);
  }
  if (!response.ok) {
    const prefix = response.status === 403 ? 'Access denied: ' : '';
    throw new ApiError(response.status, `${prefix}${outcomeText(parsed, response.status)}`, parsed);
  }
  return { status: response.status, body: parsed, text, headers: response.headers };
}

function url(path) {
  if (/^https?:\/\//.test(path)) {
    // Only this server: a link from a Bundle is followed only when it points here.
    if (!path.startsWith(`${origin()}/`)) throw new ApiError(0, 'A link pointed to another server; it was not followed.');
    return path;
  }
  return `${fhirBase()}/${path.replace(/^\//, '')}`;
}

export const api = {
  async get(path) {
    return (await request('GET', url(path))).body;
  },
  /** The response's text exactly as the server sent it, and its parsed JSON. */
  async getRaw(path) {
    return request('GET', url(path));
  },
  async post(path, body) {
    return (await request('POST', url(path), body)).body;
  },
  async postFull(path, body) {
    return request('POST', url(path), body);
  },
  async put(path, body) {
    return (await request('PUT', url(path), body)).body;
  },
  /** A JSON-RPC call to the server's proxy of its chain, `/ledger/rpc` (public: no token). */
  async rpc(method, params) {
    const answer = (await request('POST', `${origin()}/ledger/rpc`, { jsonrpc: '2.0', id: 1, method, params }, {
      'Content-Type': 'application/json',
      Accept: 'application/json',
    }, false)).body;
    if (!answer || answer.error) {
      throw new ApiError(502, `The chain answered with an error: ${answer && answer.error ? answer.error.message : 'nothing'}`);
    }
    return answer.result;
  },
};

/** Every resource of a search, following `next` links up to `maxPages` pages. */
export async function searchAll(path, maxPages = 20) {
  const resources = [];
  let next = path;
  for (let page = 0; next && page < maxPages; page += 1) {
    const bundle = await api.get(next);
    for (const entry of bundle.entry || []) {
      if (entry.resource && (!entry.search || entry.search.mode !== 'outcome')) resources.push(entry.resource);
    }
    const link = (bundle.link || []).find((l) => l.relation === 'next');
    next = link ? link.url : null;
  }
  return resources;
}

/** A Parameters resource of valueString parameters. */
export function parameters(values) {
  return {
    resourceType: 'Parameters',
    parameter: Object.entries(values)
      .filter(([, value]) => value !== undefined && value !== null)
      .flatMap(([name, value]) => [value].flat().map((v) => (
        typeof v === 'number' && Number.isInteger(v) ? { name, valueInteger: v } : { name, valueString: String(v) }
      ))),
  };
}

/** A parameter's value by name from a Parameters resource (the first; all with `all`). */
export function param(params, name, all = false) {
  const values = ((params && params.parameter) || [])
    .filter((p) => p.name === name)
    .map((p) => {
      const key = Object.keys(p).find((k) => k.startsWith('value'));
      return key ? p[key] : p.resource;
    });
  return all ? values : values[0];
}
