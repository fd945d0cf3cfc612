'use strict';
// transaction and batch Bundles, processed entry by entry (see README.md, "Transactions").
//
// Medplum's own processor (fhir-router batch.ts) refuses transactions with more than 50
// updates, refuses conditional creates in transactions of more than 8 entries, rewrites every
// string that contains a fullUrl (Identifier.value too), reports 200 for a PUT that created,
// and is not atomic over MemoryRepository. This one:
//   1. resolves every entry's identity first: PUT/DELETE/PATCH Type/id as written, a create
//      gets a fresh id, a conditional create/update the id of its single match (412 on several);
//   2. runs entries in the order FHIR prescribes (DELETE, POST, PUT, PATCH, GET/HEAD), Bundle
//      order within each, through FhirEngine.execute (Medplum's handlers);
//   3. rewrites Reference.reference values (and narrative hrefs) equal to a fullUrl of the
//      Bundle to Type/id; a urn:uuid/urn:oid reference that matches no fullUrl is a 400; a
//      conditional reference (Type?query) becomes the Type/id of its single match (404 when
//      none matches, 412 when several do), as HAPI resolves them;
//   4. for a transaction, restores the store as it was before if any entry fails, and answers
//      with that entry's status and OperationOutcome; a batch records per-entry failures.

const { getReferenceString, OperationOutcomeError, parseSearchRequest } = require('@medplum/core');
const { STATUS_CODES } = require('node:http');
const { errorResult, fail, versionHeaders } = require('./engine');

const ORDER = { DELETE: 0, POST: 1, PUT: 2, PATCH: 3, GET: 4, HEAD: 4 };
const PLACEHOLDER = /^urn:(uuid|oid):/;
const CONDITIONAL_REFERENCE = /^([A-Z][A-Za-z]+)\?(.+)$/;

function statusLine(status) {
  return `${status} ${STATUS_CODES[status] ?? ''}`.trim();
}

class BundleProcessor {
  /**
   * @param {import('./engine').FhirEngine} engine
   * @param {{ prefer?: string }} options prefer: the Prefer header's return value
   */
  constructor(engine, { prefer } = {}) {
    this.engine = engine;
    this.repo = engine.repo;
    this.prefer = prefer ?? 'representation';
  }

  /** @returns {Promise<any>} the transaction-response or batch-response Bundle */
  async process(bundle) {
    if (bundle?.resourceType !== 'Bundle') {
      throw fail(400, 'invalid', 'POST to the base URL needs a Bundle');
    }
    if (bundle.type !== 'transaction' && bundle.type !== 'batch') {
      throw fail(400, 'invalid', `Bundle.type must be transaction or batch, not ${bundle.type ?? '(missing)'}`);
    }
    const entries = Array.isArray(bundle.entry) ? bundle.entry : [];
    return bundle.type === 'transaction' ? this.transaction(entries) : this.batch(entries);
  }

  async transaction(entries) {
    const snapshot = this.repo.snapshot();
    try {
      const plans = [];
      const placeholders = new Map();
      const written = new Map();
      for (let i = 0; i < entries.length; i++) {
        const plan = await this.plan(entries[i], i);
        if (plan.placeholder) {
          placeholders.set(plan.placeholder, plan.reference);
        }
        if (plan.writes) {
          if (written.has(plan.reference)) {
            throw fail(400, 'invalid', `${plan.reference} is the target of Bundle.entry[${written.get(plan.reference)}] and Bundle.entry[${i}]`);
          }
          written.set(plan.reference, i);
        }
        plans.push(plan);
      }
      const results = new Array(entries.length);
      for (const plan of [...plans].sort((a, b) => a.order - b.order || a.index - b.index)) {
        try {
          results[plan.index] = await this.run(plan, placeholders);
        } catch (err) {
          throw entryError(err, plan);
        }
      }
      return this.response('transaction-response', results);
    } catch (err) {
      this.repo.restore(snapshot);
      throw err;
    }
  }

  async batch(entries) {
    const results = [];
    for (let i = 0; i < entries.length; i++) {
      try {
        results.push(await this.run(await this.plan(entries[i], i), new Map()));
      } catch (err) {
        const { status, outcome } = errorResult(entryError(err, { index: i, entry: entries[i] }));
        results.push({ status, outcome, failed: true });
      }
    }
    return this.response('batch-response', results);
  }

  /** What an entry will do, and the identity it has once done. */
  async plan(entry, index) {
    const request = entry?.request;
    const method = request?.method;
    const url = this.relativeUrl(request?.url);
    if (!(method in ORDER) || !url) {
      throw entryError(fail(400, 'required', 'Bundle entries need request.method and request.url'), { index, entry });
    }
    const plan = { index, entry, method, url, order: ORDER[method], placeholder: undefined, reference: undefined };
    if (typeof entry.fullUrl === 'string' && PLACEHOLDER.test(entry.fullUrl)) {
      plan.placeholder = entry.fullUrl;
    }
    try {
      const route = this.engine.route(method === 'HEAD' ? 'GET' : method, url);
      plan.interaction = route.data.interaction;
      const { resourceType, id } = route.params;
      if (id && ['update', 'delete', 'patch'].includes(plan.interaction)) {
        plan.reference = `${resourceType}/${id}`;
        plan.writes = true;
      } else if (plan.interaction === 'create') {
        plan.id = await this.singleMatch(resourceType, request.ifNoneExist);
        plan.existing = Boolean(plan.id);
        plan.id ??= this.repo.generateId();
        plan.reference = `${resourceType}/${plan.id}`;
      } else if (plan.interaction === 'update') {
        plan.id = (await this.singleMatch(resourceType, url.slice(url.indexOf('?') + 1))) ?? this.repo.generateId();
        plan.url = `${resourceType}/${plan.id}`;
        plan.reference = plan.url;
        plan.writes = true;
      }
    } catch (err) {
      throw entryError(err, plan);
    }
    return plan;
  }

  /** The id of the one resource matching a conditional query; undefined when none; 412 when several. */
  async singleMatch(resourceType, query) {
    if (!query) {
      return undefined;
    }
    const search = parseSearchRequest(`${resourceType}?${query}`);
    this.engine.checkSearch(search, 'conditional request');
    const matches = await this.repo.searchResources({ ...search, count: 2, sortRules: undefined });
    if (matches.length > 1) {
      throw fail(412, 'multiple-matches', `${resourceType}?${query} matches more than one resource`);
    }
    return matches[0]?.id;
  }

  /** The Type/id a conditional reference (Type?query) stands for: its single match. */
  async conditionalReference(reference, index) {
    const [, resourceType, query] = reference.match(CONDITIONAL_REFERENCE);
    const id = await this.singleMatch(resourceType, query);
    if (!id) {
      throw fail(404, 'not-found', `conditional reference ${reference} matches no resource`, `Bundle.entry[${index}]`);
    }
    return `${resourceType}/${id}`;
  }

  async run(plan, placeholders) {
    const { entry, method } = plan;
    if (plan.existing) {
      const resource = await this.repo.readResource(...plan.reference.split('/'));
      return { status: 200, resource, ...versionHeaders(resource) };
    }
    let body = entry.resource;
    if (body !== undefined) {
      const unresolved = [];
      const known = new Map(placeholders);
      for (const reference of conditionalReferences(body)) {
        known.set(reference, await this.conditionalReference(reference, plan.index));
      }
      body = rewrite(body, known, unresolved, 'resource');
      if (unresolved.length) {
        throw fail(400, 'not-found', `${unresolved[0].value} matches no fullUrl in this Bundle`, `Bundle.entry[${plan.index}].${unresolved[0].path}`);
      }
      if (plan.id && body && typeof body === 'object') {
        body.id = plan.id;
      }
    }
    const headers = Object.create(null);
    for (const [field, header] of [['ifMatch', 'if-match'], ['ifNoneMatch', 'if-none-match'], ['ifModifiedSince', 'if-modified-since']]) {
      if (entry.request[field]) {
        headers[header] = entry.request[field];
      }
    }
    const url = replacePlaceholders(plan.url, placeholders);
    const result = await this.engine.execute(
      { method: method === 'HEAD' ? 'GET' : method, url, body, headers },
      { assignedId: Boolean(plan.id) }
    );
    return method === 'HEAD' ? { ...result, resource: undefined } : result;
  }

  relativeUrl(url) {
    if (typeof url !== 'string') {
      return undefined;
    }
    const base = this.engine.baseUrl;
    if (base && url.startsWith(base + '/')) {
      return url.slice(base.length + 1);
    }
    return url.replace(/^\//, '');
  }

  response(type, results) {
    return {
      resourceType: 'Bundle',
      type,
      entry: results.map((result) => {
        const response = { status: statusLine(result.status) };
        for (const field of ['location', 'etag', 'lastModified']) {
          if (result[field]) {
            response[field] = result[field];
          }
        }
        if (result.failed || (this.prefer === 'OperationOutcome' && result.outcome)) {
          response.outcome = result.outcome;
        }
        const resource = result.resource;
        const keep = resource && !result.failed && (this.prefer === 'representation' || !response.location);
        return {
          ...(resource?.id && response.location ? { fullUrl: `${this.engine.baseUrl}/${getReferenceString(resource)}` } : {}),
          ...(keep ? { resource } : {}),
          response,
        };
      }),
    };
  }
}

/** Every distinct conditional reference (Type?query) in a resource. */
function conditionalReferences(value, found = new Set()) {
  if (Array.isArray(value)) {
    value.forEach((item) => conditionalReferences(item, found));
  } else if (value !== null && typeof value === 'object') {
    for (const [key, item] of Object.entries(value)) {
      if (key === 'reference' && typeof item === 'string' && CONDITIONAL_REFERENCE.test(item)) {
        found.add(item);
      } else {
        conditionalReferences(item, found);
      }
    }
  }
  return found;
}

/** Rewrite Reference.reference values and narrative links that name a fullUrl of the Bundle. */
function rewrite(value, placeholders, unresolved, path) {
  if (Array.isArray(value)) {
    return value.map((item, i) => rewrite(item, placeholders, unresolved, `${path}[${i}]`));
  }
  if (value === null || typeof value !== 'object') {
    return value;
  }
  const out = {};
  for (const [key, item] of Object.entries(value)) {
    if (key === 'reference' && typeof item === 'string') {
      out[key] = resolveReference(item, placeholders, unresolved, `${path}.reference`);
    } else if (key === 'div' && typeof item === 'string') {
      out[key] = replacePlaceholders(item, placeholders);
    } else {
      out[key] = rewrite(item, placeholders, unresolved, `${path}.${key}`);
    }
  }
  return out;
}

function resolveReference(reference, placeholders, unresolved, path) {
  const [target, fragment] = reference.split('#', 2);
  const resolved = placeholders.get(target);
  if (resolved) {
    return fragment === undefined ? resolved : `${resolved}#${fragment}`;
  }
  if (PLACEHOLDER.test(target)) {
    unresolved.push({ value: reference, path });
  }
  return reference;
}

function replacePlaceholders(text, placeholders) {
  if (!text.includes('urn:')) {
    return text;
  }
  let out = text;
  for (const [placeholder, reference] of placeholders) {
    out = out.replaceAll(placeholder, reference);
  }
  return out;
}

/** The error of one entry, its OperationOutcome naming the entry. */
function entryError(err, { index, entry }) {
  if (err?.entryIndex !== undefined) {
    return err;
  }
  const { status, outcome } = errorResult(err);
  const where = `Bundle.entry[${index}]` + (entry?.request?.method ? ` (${entry.request.method} ${entry.request.url})` : '');
  const issues = (outcome.issue ?? []).map((issue) => ({
    ...issue,
    diagnostics: `${where}: ${issue.diagnostics ?? issue.details?.text ?? issue.code}`,
  }));
  const wrapped = new OperationOutcomeError({ resourceType: 'OperationOutcome', issue: issues });
  wrapped.httpStatus = status;
  wrapped.entryIndex = index;
  return wrapped;
}

module.exports = { BundleProcessor };
