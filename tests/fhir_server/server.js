#!/usr/bin/env node
'use strict';
// sr2fhir's loopback FHIR R5 test server: Medplum's FhirRouter over an in-memory repository,
// with R5 definitions. See README.md.
//
//   node server.js [--port N] [--no-validate] [--ignore-stdin] [--quiet]
//
// Listens on 127.0.0.1 only (no auth), prints "LISTENING <port>" on stdout once ready and
// nothing else there; logs one line per request on stderr (unless --quiet). Serves FHIR JSON
// under /fhir/R5. Exits on SIGTERM/SIGINT and when stdin closes (so a test run that dies
// leaves no server behind); --ignore-stdin keeps it running without a stdin.

// @medplum/core expects a browser-like WebSocket global; nothing here opens one.
globalThis.WebSocket ??= class WebSocket {
  constructor() {
    throw new Error('WebSocket is not available in the sr2fhir test FHIR server');
  }
};

const http = require('node:http');
const { FhirRouter } = require('@medplum/fhir-router');
const { allOk, errorResult, FhirEngine, outcome } = require('./lib/engine');
const { capabilityStatement, loadR5Definitions } = require('./lib/definitions');
const { R5MemoryRepository } = require('./lib/repository');

const BASE_PATH = '/fhir/R5';
const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const JSON_TYPES = new Set(['application/fhir+json', 'application/json', 'application/json-patch+json']);
const FORM_TYPE = 'application/x-www-form-urlencoded';
const MAX_BODY_BYTES = 64 * 1024 * 1024;
const SOFTWARE = {
  name: 'sr2fhir test FHIR server (@medplum/fhir-router MemoryRepository, hl7.fhir.r5.core)',
  version: require('./package.json').dependencies['@medplum/fhir-router'],
};

function usage(message) {
  process.stderr.write(`${message}\nusage: node server.js [--port N] [--no-validate] [--ignore-stdin] [--quiet]\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const args = { port: 0, validate: true, watchStdin: true, quiet: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--port') {
      args.port = Number(argv[++i]);
      if (!Number.isInteger(args.port) || args.port < 0 || args.port > 65535) {
        usage(`--port needs a number from 0 to 65535, not ${argv[i]}`);
      }
    } else if (arg === '--no-validate') {
      args.validate = false;
    } else if (arg === '--ignore-stdin') {
      args.watchStdin = false;
    } else if (arg === '--quiet') {
      args.quiet = true;
    } else {
      usage(`unknown argument ${arg}`);
    }
  }
  return args;
}

/** Runs handlers one at a time: no two requests interleave their reads and writes. (This does
 * not make a transaction atomic: an entry that fails leaves the earlier ones written.) */
class SerialQueue {
  constructor() {
    this.tail = Promise.resolve();
  }

  run(task) {
    const result = this.tail.then(task);
    this.tail = result.catch(() => undefined);
    return result;
  }
}

class HttpError extends Error {
  constructor(status, code, text, headers = {}) {
    super(text);
    this.result = { status, outcome: outcome('error', code, text), headers };
  }
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new HttpError(413, 'too-costly', `Request body over ${MAX_BODY_BYTES} bytes`));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function parseBody(req, raw) {
  if (!raw.length) {
    return undefined;
  }
  const mediaType = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
  if (JSON_TYPES.has(mediaType)) {
    try {
      return JSON.parse(raw.toString('utf8'));
    } catch (err) {
      throw new HttpError(400, 'structure', `Body is not valid JSON: ${err.message}`);
    }
  }
  if (mediaType === FORM_TYPE) {
    return Object.fromEntries(new URLSearchParams(raw.toString('utf8')));
  }
  throw new HttpError(415, 'not-supported', `Content-Type "${mediaType || '(none)'}" is not supported; send application/fhir+json`);
}

function checkAcceptable(req, url) {
  const format = url.searchParams.get('_format');
  if (format && !/json/.test(format)) {
    throw new HttpError(406, 'not-supported', `_format=${format} is not supported; this server speaks JSON only`);
  }
  const accept = req.headers.accept;
  if (!format && accept && !/json|\*\/\*|application\/\*/.test(accept)) {
    throw new HttpError(406, 'not-supported', `Accept: ${accept} is not supported; this server speaks JSON only`);
  }
}

function preferredReturn(req) {
  const match = /return=(minimal|representation|OperationOutcome)/.exec(req.headers.prefer ?? '');
  return match ? match[1] : 'representation';
}

function requestHeaders(req) {
  const headers = Object.create(null);
  for (const name of ['if-none-exist', 'if-match', 'if-none-match', 'if-modified-since']) {
    if (req.headers[name]) {
      headers[name] = req.headers[name];
    }
  }
  return headers;
}

function send(res, result, context) {
  const headers = { 'Content-Type': FHIR_JSON, ...(result.headers ?? {}) };
  if (result.location) {
    headers.Location = `${context.baseUrl}/${result.location}`;
  }
  if (result.etag) {
    headers.ETag = result.etag;
  }
  if (result.lastModified) {
    headers['Last-Modified'] = new Date(result.lastModified).toUTCString();
  }
  let body = result.resource ?? result.outcome;
  if (result.location && context.prefer !== 'representation') {
    body = context.prefer === 'OperationOutcome' ? (result.outcome ?? allOk) : undefined;
  }
  const payload = body === undefined ? Buffer.alloc(0) : Buffer.from(JSON.stringify(body), 'utf8');
  if (!payload.length) {
    delete headers['Content-Type'];
  }
  headers['Content-Length'] = payload.length;
  res.writeHead(result.status, headers);
  res.end(payload);
}

async function handle(req, raw, app) {
  const url = new URL(req.url, 'http://127.0.0.1');
  const path = url.pathname.replace(/\/+$/, '');
  if (path !== BASE_PATH && !path.startsWith(BASE_PATH + '/')) {
    throw new HttpError(404, 'not-found', `Not a FHIR endpoint; the base is ${BASE_PATH}`);
  }
  checkAcceptable(req, url);
  const relative = path.slice(BASE_PATH.length + 1);
  const method = req.method === 'HEAD' ? 'GET' : req.method;
  if (relative === 'metadata') {
    if (method !== 'GET') {
      throw new HttpError(405, 'not-supported', 'metadata only answers GET', { Allow: 'GET' });
    }
    return { status: 200, resource: app.capabilityStatement };
  }
  const body = parseBody(req, raw);
  // POST to the base (a transaction or batch Bundle) goes to Medplum's own processor, through
  // the FhirRouter's 'batch' route, like any other interaction (engine.js, callHandler).
  return app.engine.execute({ method, url: relative + url.search, body, headers: requestHeaders(req) });
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  const log = args.quiet ? () => undefined : (line) => process.stderr.write(line + '\n');
  // Exit paths first, so a stop during the (1-2 s) definition load is honoured too.
  let server;
  let stopping = false;
  const stop = (reason) => {
    if (stopping) {
      return;
    }
    stopping = true;
    log(`stopping: ${reason}`);
    server?.close();
    server?.closeAllConnections();
    process.exit(0);
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  if (args.watchStdin) {
    process.stdin.on('end', () => stop('stdin closed'));
    process.stdin.on('close', () => stop('stdin closed'));
    process.stdin.on('error', () => stop('stdin error'));
    process.stdin.resume();
  }

  const loadStarted = Date.now();
  const definitions = loadR5Definitions();
  const repo = new R5MemoryRepository({ validate: args.validate });
  const engine = new FhirEngine({ repo, router: new FhirRouter(), resourceTypes: definitions.resourceTypes });
  const app = { engine, capabilityStatement: undefined, baseUrl: '' };
  const queue = new SerialQueue();
  log(`loaded FHIR ${definitions.fhirVersion} definitions (${definitions.resourceTypes.length} resource types) in ${Date.now() - loadStarted} ms`);

  server = http.createServer((req, res) => {
    const started = process.hrtime.bigint();
    const context = { baseUrl: app.baseUrl, prefer: preferredReturn(req) };
    readBody(req)
      .then((raw) => queue.run(() => handle(req, raw, app)))
      .catch((err) => {
        if (err instanceof HttpError) {
          return err.result;
        }
        const result = errorResult(err);
        if (err?.allow) {
          result.headers = { Allow: err.allow.join(', ') };
        }
        if (!(err?.outcome)) {
          log(`error on ${req.method} ${req.url}: ${err?.stack ?? err}`);
        }
        return result;
      })
      .then((result) => {
        try {
          if (!res.destroyed) {
            send(res, result, context);
          }
        } catch (err) {
          log(`cannot answer ${req.method} ${req.url}: ${err?.stack ?? err}`);
          res.destroy();
        }
        const ms = Number(process.hrtime.bigint() - started) / 1e6;
        log(`${req.method} ${req.url} -> ${result.status} (${ms.toFixed(1)} ms)`);
      });
  });
  server.keepAliveTimeout = 65_000; // longer than clients keep idle connections (httpx: 5 s)
  server.headersTimeout = 66_000;

  server.on('error', (err) => {
    process.stderr.write(`cannot listen: ${err.message}\n`);
    process.exit(1);
  });
  server.listen(args.port, '127.0.0.1', () => {
    const { port } = server.address();
    app.baseUrl = `http://127.0.0.1:${port}${BASE_PATH}`;
    engine.baseUrl = app.baseUrl;
    app.capabilityStatement = capabilityStatement(definitions, app.baseUrl, SOFTWARE);
    process.stdout.write(`LISTENING ${port}\n`);
  });
}

main();
