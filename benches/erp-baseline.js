#!/usr/bin/env node
// The Node.js baseline of the ERP read benchmark (`cargo bench --bench erp`): a plain
// `node:https` server with client certificates that answers
// `GET /v1/erp/{collection}/{key}` with a 1 KiB JSON record held in memory, as a coffer
// hit does, so the same load generator can measure both servers on the same machine.
//
// What it does, per request: the TLS layer (TLS 1.3 only; `requestCert: true`,
// `rejectUnauthorized: true`, so the handshake fails without a client certificate issued by
// `--ca`), then a lookup of the key in a `Map`, and a 200 with the stored bytes and the
// same header shape as coffer's (`Content-Type: application/json`, a strong `ETag`
// computed once at load, `Age`, `Cache-Status`, `Cache-Control: private, no-cache`), or a
// 304 on a matching `If-None-Match`, or a 404 problem for an unknown collection or key.
//
// What it deliberately does NOT do: it checks nothing but the client certificate. The
// SigV4 `Authorization`, `X-Amz-Date` and `X-Amz-Security-Token` headers are ignored (no
// signature verification, no session or device lookup, no role check), nothing is
// decrypted and nothing is read from disk. It is the cost of serving the record over mTLS
// from Node, i.e. a lower bound for any Node implementation of the endpoint.
//
// Usage (built-in modules only; Node 18+):
//
//   node benches/erp-baseline.js --ca CA.pem --cert SERVER.pem --key SERVER.key \
//        [--records RECORDS.json] [--collection customers] [--port 0] [--host 127.0.0.1] \
//        [--workers 1]
//
// Each option may also come from the environment: ERP_BASELINE_CA, ERP_BASELINE_CERT,
// ERP_BASELINE_KEY, ERP_BASELINE_RECORDS, ERP_BASELINE_COLLECTION, ERP_BASELINE_PORT,
// ERP_BASELINE_HOST, ERP_BASELINE_WORKERS (a flag wins over the environment).
//
// - `--records`: a JSON object mapping each key to its record's JSON *text* (a string), so
//   the bytes served are exactly the bytes the benchmark wrote to coffer. Without it, every
//   key answers the same built-in 1 KiB record.
// - `--workers N`: with N > 1, a `node:cluster` of N processes sharing the port (the
//   primary hands connections out round-robin); the default, 1, is one process, i.e. one
//   core's worth of JavaScript and OpenSSL.
//
// Once listening it prints the port as one line on stdout (and nothing else there). It
// exits on SIGTERM or SIGINT, and when its stdin closes (so it cannot outlive a benchmark
// that dies), taking its cluster workers with it.
//
// Keep-alive: HTTP/1.1 persistent connections, 65 s idle timeout, no per-socket request
// cap. Unlike coffer it leaves OpenSSL's TLS 1.3 session tickets on; the benchmark's client
// never resumes, and handshakes are not timed.

'use strict';

const cluster = require('node:cluster');
const crypto = require('node:crypto');
const fs = require('node:fs');
const https = require('node:https');

const OPTIONS = {
  ca: 'ERP_BASELINE_CA',
  cert: 'ERP_BASELINE_CERT',
  key: 'ERP_BASELINE_KEY',
  records: 'ERP_BASELINE_RECORDS',
  collection: 'ERP_BASELINE_COLLECTION',
  port: 'ERP_BASELINE_PORT',
  host: 'ERP_BASELINE_HOST',
  workers: 'ERP_BASELINE_WORKERS',
};

function fail(message) {
  process.stderr.write(`erp-baseline: ${message}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const out = {};
  for (const [name, env] of Object.entries(OPTIONS)) {
    if (process.env[env] !== undefined && process.env[env] !== '') out[name] = process.env[env];
  }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--help' || arg === '-h') {
      process.stdout.write(
        'usage: erp-baseline.js --ca FILE --cert FILE --key FILE [--records FILE] ' +
          '[--collection NAME] [--port N] [--host ADDR] [--workers N]\n',
      );
      process.exit(0);
    }
    const m = /^--([a-z]+)(?:=(.*))?$/.exec(arg);
    if (!m || !(m[1] in OPTIONS)) fail(`unknown argument ${JSON.stringify(arg)} (try --help)`);
    let value = m[2];
    if (value === undefined) {
      if (i + 1 >= argv.length) fail(`--${m[1]} needs a value`);
      value = argv[++i];
    }
    out[m[1]] = value;
  }
  for (const required of ['ca', 'cert', 'key']) {
    if (!out[required]) fail(`--${required} (or ${OPTIONS[required]}) is required`);
  }
  const int = (name, fallback, lo, hi) => {
    if (out[name] === undefined) return fallback;
    const n = Number(out[name]);
    if (!Number.isInteger(n) || n < lo || n > hi) fail(`--${name} must be an integer ${lo}..${hi}`);
    return n;
  };
  return {
    ca: out.ca,
    cert: out.cert,
    key: out.key,
    records: out.records,
    collection: out.collection || 'customers',
    host: out.host || '127.0.0.1',
    port: int('port', 0, 0, 65535),
    workers: int('workers', 1, 1, 256),
  };
}

// A strong ETag in coffer's shape: 22 base64url characters (128 bits) of the body's SHA-256.
function etagOf(body) {
  return `"${crypto.createHash('sha256').update(body).digest('base64url').slice(0, 22)}"`;
}

// The built-in record: compact JSON of exactly 1024 bytes.
function defaultRecord() {
  const base = { id: 'cust-00000', name: 'Customer 0', country: 'DE', credit_limit: 50000, notes: '' };
  const pad = 1024 - Buffer.byteLength(JSON.stringify(base));
  base.notes = 'x'.repeat(pad);
  return JSON.stringify(base);
}

function loadRecords(file) {
  const records = new Map();
  if (!file) return records;
  let parsed;
  try {
    parsed = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    fail(`--records ${file}: ${e.message}`);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    fail(`--records ${file}: expected an object mapping keys to record JSON text`);
  }
  for (const [key, text] of Object.entries(parsed)) {
    if (typeof text !== 'string') fail(`--records ${file}: the record of ${JSON.stringify(key)} is not a string`);
    const body = Buffer.from(text, 'utf8');
    records.set(key, { body, etag: etagOf(body), length: String(body.length) });
  }
  return records;
}

function problem(res, status, type, detail) {
  const body = JSON.stringify({ type: `urn:coffer:problem:${type}`, title: type, status, detail });
  res.writeHead(status, {
    'Content-Type': 'application/problem+json',
    'Content-Length': Buffer.byteLength(body),
  });
  res.end(body);
}

function serve(opts) {
  const records = loadRecords(opts.records);
  const fallback = (() => {
    const body = Buffer.from(defaultRecord(), 'utf8');
    return { body, etag: etagOf(body), length: String(body.length) };
  })();
  const useFallback = records.size === 0;
  const prefix = `/v1/erp/${opts.collection}/`;
  const loadedAt = Date.now();

  const server = https.createServer(
    {
      ca: fs.readFileSync(opts.ca),
      cert: fs.readFileSync(opts.cert),
      key: fs.readFileSync(opts.key),
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.3',
      maxVersion: 'TLSv1.3',
    },
    (req, res) => {
      if (req.method !== 'GET') {
        res.setHeader('Allow', 'GET');
        return problem(res, 405, 'method-not-allowed', 'only GET');
      }
      const url = req.url;
      const q = url.indexOf('?');
      const path = q < 0 ? url : url.slice(0, q);
      if (!path.startsWith(prefix)) return problem(res, 404, 'not-found', 'no such collection');
      const raw = path.slice(prefix.length);
      let key;
      try {
        key = decodeURIComponent(raw);
      } catch {
        return problem(res, 400, 'invalid-request', 'bad percent-encoding in the key');
      }
      if (raw.length === 0 || raw.includes('/') || key === '.' || key === '..') {
        return problem(res, 400, 'invalid-request', 'bad key');
      }
      const rec = useFallback ? fallback : records.get(key);
      if (rec === undefined) return problem(res, 404, 'not-found', 'no such record');
      const age = String(Math.floor((Date.now() - loadedAt) / 1000));
      const inm = req.headers['if-none-match'];
      if (inm !== undefined && (inm.trim() === '*' || inm.split(',').some((t) => t.trim() === rec.etag))) {
        res.writeHead(304, { ETag: rec.etag, Age: age, 'Cache-Status': 'node; hit' });
        return res.end();
      }
      res.writeHead(200, {
        'Content-Type': 'application/json',
        'Content-Length': rec.length,
        ETag: rec.etag,
        Age: age,
        'Cache-Status': 'node; hit',
        'Cache-Control': 'private, no-cache',
      });
      res.end(rec.body);
    },
  );
  server.keepAliveTimeout = 65_000;
  server.headersTimeout = 70_000;
  server.maxRequestsPerSocket = 0;
  server.on('tlsClientError', () => {}); // a refused handshake is the client's problem
  server.on('error', (e) => fail(`listen ${opts.host}:${opts.port}: ${e.message}`));
  server.listen(opts.port, opts.host, () => {
    if (cluster.isWorker) {
      process.send({ listening: server.address().port });
    } else {
      process.stdout.write(`${server.address().port}\n`);
    }
  });
}

function exitOnStdinClose(stop) {
  process.stdin.on('end', stop);
  process.stdin.on('close', stop);
  process.stdin.on('error', stop);
  process.stdin.resume(); // read (and drop) whatever arrives, to see the end
}

function main() {
  if (cluster.isWorker) {
    // A worker: its options come from the primary; it exits when the primary goes.
    serve(JSON.parse(process.env.ERP_BASELINE_WORKER_OPTIONS));
    return;
  }
  const opts = parseArgs(process.argv.slice(2));
  if (opts.workers === 1) {
    const stop = () => process.exit(0);
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
    exitOnStdinClose(stop);
    serve(opts);
    return;
  }
  // Round-robin from the primary (the Linux default, made explicit).
  cluster.schedulingPolicy = cluster.SCHED_RR;
  const workers = [];
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    // Wait for the workers (so they are reaped, not left as zombies), 2 s at most.
    let left = workers.filter((w) => w.process.exitCode === null && w.process.signalCode === null).length;
    if (left === 0) process.exit(0);
    for (const w of workers) {
      w.once('exit', () => {
        if (--left === 0) process.exit(0);
      });
      w.process.kill('SIGTERM');
    }
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  exitOnStdinClose(stop);
  let listening = 0;
  for (let i = 0; i < opts.workers; i++) {
    const w = cluster.fork({ ERP_BASELINE_WORKER_OPTIONS: JSON.stringify(opts) });
    workers.push(w);
    w.on('message', (m) => {
      // listen(0) in every worker shares the one port the primary picked.
      if (m && m.listening !== undefined && ++listening === opts.workers) {
        process.stdout.write(`${m.listening}\n`);
      }
    });
    w.on('exit', (code, signal) => {
      if (!stopping) fail(`worker ${i} exited (${signal || code})`);
    });
  }
}

main();
