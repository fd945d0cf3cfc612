'use strict';
// One FHIR interaction in, one result out, for the HTTP layer.
//
// Medplum's route handlers do the work (create, read, vread, update, patch, delete, history,
// conditional create/update/delete, and transaction/batch Bundles: fhir-router batch.ts). This
// layer adds what a server owes its clients on top of single interactions: 201 for an update
// that created, Location/ETag/Last-Modified, known resource types only, and searches that refuse
// what the in-memory matcher would silently get wrong (unknown parameters, chains, _include,
// number/quantity/composite parameters, unsupported modifiers). None of that applies inside a
// Bundle: Medplum's processor calls its route handlers directly.

const {
  allOk,
  badRequest,
  getSearchParameter,
  getStatus,
  isOk,
  normalizeOperationOutcome,
  OperationOutcomeError,
  parseSearchRequest,
} = require('@medplum/core');

const DEFAULT_PAGE_SIZE = 20;
const MAX_PAGE_SIZE = 1000;

// Modifiers / prefixes the in-memory matcher (@medplum/core search/match.ts) implements, by
// search parameter type. Anything else would be treated as plain equality or never match.
const SUPPORTED_OPERATORS = {
  token: new Set(['eq', 'not', 'missing', 'present']),
  reference: new Set(['eq', 'not', 'missing', 'present']),
  string: new Set(['eq', 'contains', 'not', 'missing', 'present']),
  uri: new Set(['eq', 'not', 'missing', 'present']),
  date: new Set(['eq', 'ne', 'lt', 'gt', 'le', 'ge', 'sa', 'eb', 'ap', 'missing', 'present']),
};

const SUBSETTED = { system: 'http://terminology.hl7.org/CodeSystem/v3-ObservationValue', code: 'SUBSETTED' };

function outcome(severity, code, text, expression) {
  return {
    resourceType: 'OperationOutcome',
    issue: [{ severity, code, details: { text }, ...(expression ? { expression: [expression] } : {}) }],
  };
}

/** An OperationOutcomeError that carries its HTTP status. */
function fail(status, code, text, expression) {
  const err = new OperationOutcomeError(outcome('error', code, text, expression));
  err.httpStatus = status;
  return err;
}

/** Status and OperationOutcome of any thrown value; plain Errors are client errors (400), as in Medplum's router. */
function errorResult(err) {
  const oo = normalizeOperationOutcome(err);
  return { status: err?.httpStatus ?? getStatus(oo), outcome: oo };
}

function versionHeaders(resource) {
  const versionId = resource?.meta?.versionId;
  if (!resource?.id || !versionId) {
    return {};
  }
  return {
    location: `${resource.resourceType}/${resource.id}/_history/${versionId}`,
    etag: `W/"${versionId}"`,
    lastModified: resource.meta.lastUpdated,
  };
}

class FhirEngine {
  /**
   * @param {{ repo: import('./repository').R5MemoryRepository, router: any, resourceTypes: string[] }} options
   */
  constructor({ repo, router, resourceTypes }) {
    this.repo = repo;
    this.router = router;
    this.resourceTypes = new Set(resourceTypes);
    this.baseUrl = '';
  }

  /** Route a request; throws on unknown paths and unknown resource types. */
  route(method, url) {
    const route = this.router.find(method, url);
    if (!route) {
      const allowed = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE'].filter((m) => this.router.find(m, url));
      if (allowed.length) {
        const err = fail(405, 'not-supported', `${method} is not supported here (allowed: ${allowed.join(', ')})`);
        err.allow = allowed;
        throw err;
      }
      throw fail(404, 'not-found', `No FHIR interaction at ${method} ${url.split('?')[0] || '/'}`);
    }
    const { resourceType } = route.params;
    if (resourceType && !this.resourceTypes.has(resourceType)) {
      throw fail(404, 'not-supported', `Unknown resource type "${resourceType}" (not an R5 resource)`);
    }
    if (route.data?.interaction === 'operation') {
      throw fail(404, 'not-supported', `Operation ${url.split('?')[0]} is not supported`);
    }
    return route;
  }

  /**
   * Execute one non-Bundle interaction.
   * @param {{ method: string, url: string, body?: any, headers?: Record<string, string> }} request
   *   url is relative to the base and may carry a query string
   * @param {{ assignedId?: boolean }} options assignedId: a create keeps the id the caller set;
   *   otherwise the server assigns one
   * @returns {Promise<{ status: number, resource?: any, outcome?: any, location?: string, etag?: string, lastModified?: string }>}
   */
  async execute(request, options = {}) {
    const route = this.route(request.method, request.url);
    const interaction = route.data.interaction;
    const { resourceType, id } = route.params;
    switch (interaction) {
      case 'search-type': {
        const query = route.query ?? {};
        if (request.method === 'POST') {
          Object.assign(query, request.body ?? {});
        }
        return { status: 200, resource: await this.search(resourceType, query, request.url) };
      }
      case 'create': {
        const body = request.body;
        if (body && typeof body === 'object' && !options.assignedId) {
          delete body.id; // create: the server assigns the id
        }
        const ifNoneExist = request.headers?.['if-none-exist'];
        if (ifNoneExist) {
          this.checkSearch(parseSearchRequest(`${resourceType}?${ifNoneExist}`), 'If-None-Exist');
        }
        return this.callHandler(route, request, options);
      }
      case 'update': {
        if (!id) {
          this.checkSearch(parseSearchRequest(request.url), 'conditional update');
          return this.callHandler(route, request, options);
        }
        const existed = await this.repo.exists(resourceType, id);
        const result = await this.callHandler(route, request, options);
        return { ...result, status: existed ? 200 : 201 };
      }
      case 'delete':
        if (!id) {
          this.checkSearch(parseSearchRequest(request.url), 'conditional delete');
        }
        return this.callHandler(route, request, options);
      case 'batch':
        // Medplum's processBatch (fhir-router batch.ts), unchanged; config.transactions is the
        // project feature flag that Medplum's server sets for projects with 'transaction'
        // enabled: without it a transaction Bundle is processed as a batch (batch.ts isTransaction).
        if (request.body === null || typeof request.body !== 'object') {
          throw fail(400, 'invalid', 'POST to the base URL needs a Bundle');
        }
        return this.callHandler(route, request, options);
      default:
        return this.callHandler(route, request, options);
    }
  }

  async callHandler(route, request, options) {
    const queryStart = request.url.indexOf('?');
    const fhirRequest = {
      method: request.method,
      url: queryStart >= 0 ? request.url.slice(0, queryStart) : request.url,
      pathname: route.path,
      params: route.params,
      query: route.query ?? Object.create(null),
      body: request.body,
      headers: request.headers ?? Object.create(null),
      config: { transactions: true },
    };
    const [oo, resource] = await route.handler(fhirRequest, this.repo, this.router, { batch: Boolean(options.assignedId) });
    if (!isOk(oo)) {
      throw new OperationOutcomeError(oo);
    }
    const status = getStatus(oo);
    if (!resource) {
      return { status, outcome: oo };
    }
    const writes = ['create', 'update', 'patch'].includes(route.data.interaction);
    return { status, resource, ...(writes ? versionHeaders(resource) : {}) };
  }

  /** Refuse search requests the in-memory matcher cannot answer correctly. */
  checkSearch(search, where = 'search') {
    const type = search.resourceType;
    if (!this.resourceTypes.has(type)) {
      throw fail(404, 'not-supported', `Unknown resource type "${type}" in ${where}`);
    }
    if (search.include?.length || search.revInclude?.length) {
      throw fail(400, 'not-supported', '_include and _revinclude are not supported by this test server');
    }
    for (const rule of search.sortRules ?? []) {
      if (!getSearchParameter(type, rule.code)) {
        throw fail(400, 'not-supported', `Unknown _sort parameter "${rule.code}" for ${type}`);
      }
    }
    for (const filter of search.filters ?? []) {
      const name = filter.code;
      if (name.includes('.') || name.startsWith('_has')) {
        throw fail(400, 'not-supported', `Chained and reverse-chained search ("${name}") is not supported`);
      }
      const parameter = getSearchParameter(type, name);
      if (!parameter) {
        throw fail(400, 'not-supported', `Unknown search parameter "${name}" for ${type}`);
      }
      const operators = SUPPORTED_OPERATORS[parameter.type];
      if (!operators) {
        throw fail(400, 'not-supported', `Search parameter "${name}" has type ${parameter.type}, which this server cannot search`);
      }
      if (!operators.has(filter.operator)) {
        throw fail(400, 'not-supported', `Modifier or prefix "${filter.operator}" is not supported on ${parameter.type} parameter "${name}"`);
      }
    }
  }

  /** A searchset Bundle: total, self/next links, entries with fullUrl and search.mode. */
  async search(resourceType, query, requestUrl) {
    const search = parseSearchRequest(resourceType, query);
    this.checkSearch(search);
    const pageSize = Math.min(search.count ?? DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE);
    const offset = search.offset ?? 0;
    const all = await this.repo.search({ ...search, count: undefined, offset: undefined, fields: undefined });
    const matches = all.entry ?? [];
    const page = pageSize === 0 ? [] : matches.slice(offset, offset + pageSize);
    const params = new URLSearchParams(requestUrl.includes('?') ? requestUrl.slice(requestUrl.indexOf('?') + 1) : '');
    const link = [{ relation: 'self', url: `${this.baseUrl}/${resourceType}${params.size ? '?' + params : ''}` }];
    if (pageSize > 0 && offset + pageSize < matches.length) {
      params.set('_offset', String(offset + pageSize));
      params.set('_count', String(pageSize));
      link.push({ relation: 'next', url: `${this.baseUrl}/${resourceType}?${params}` });
    }
    return {
      resourceType: 'Bundle',
      type: 'searchset',
      total: matches.length,
      link,
      ...(page.length
        ? {
            entry: page.map(({ resource }) => ({
              fullUrl: `${this.baseUrl}/${resourceType}/${resource.id}`,
              resource: search.fields ? subset(resource, search.fields) : resource,
              search: { mode: 'match' },
            })),
          }
        : {}),
    };
  }
}

function subset(resource, fields) {
  const kept = { resourceType: resource.resourceType, id: resource.id, meta: { ...resource.meta } };
  for (const field of fields) {
    if (field in resource) {
      kept[field] = resource[field];
    }
  }
  kept.meta.tag = [...(kept.meta.tag ?? []), SUBSETTED];
  return kept;
}

module.exports = { FhirEngine, allOk, badRequest, errorResult, fail, outcome, versionHeaders };
