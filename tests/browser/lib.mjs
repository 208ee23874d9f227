// Shared helpers for the browser scripts: launching Debian's Chromium, reading env vars,
// printing one JSON line per event on stdout. Diagnostics go to stderr.
import { chromium } from 'playwright-core';

export function env(name, fallback) {
  const v = process.env[name];
  return v === undefined || v === '' ? fallback : v;
}

export function requireEnv(name) {
  const v = process.env[name];
  if (v === undefined || v === '') fail(`missing env ${name}`, { code: 'USAGE' }, 2);
  return v;
}

export function intEnv(name, fallback) {
  const raw = env(name, undefined);
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0) fail(`env ${name} must be a non-negative integer, got ${JSON.stringify(raw)}`, { code: 'USAGE' }, 2);
  return n;
}

export function baseUrl() {
  return requireEnv('BASE_URL').replace(/\/+$/, '');
}

export function emit(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

export function log(...args) {
  process.stderr.write(`${args.join(' ')}\n`);
}

let cleanup = null;
export function onExit(fn) { cleanup = fn; }

// Print the failure as one JSON line (stdout) and one human line (stderr), then exit.
export async function fail(message, details = {}, code = 1) {
  emit({ event: 'failed', ok: false, error: message, ...details });
  log(`FAIL: ${message}`);
  if (cleanup) {
    const fn = cleanup;
    cleanup = null;
    try { await fn(); } catch { /* best effort */ }
  }
  process.exit(code);
}

// Flags: no sandbox (the tests run as root), and no background traffic (the machine's
// network is closed; Chromium's own update/sync calls would only produce noise).
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-dev-shm-usage',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-quic',
  '--no-first-run',
];

export async function launch() {
  const executablePath = env('CHROMIUM', '/usr/bin/chromium');
  try {
    return await chromium.launch({ executablePath, args: CHROMIUM_ARGS, headless: true });
  } catch (err) {
    return fail(`could not launch Chromium at ${executablePath}: ${String(err && err.message).split('\n')[0]}`, { code: 'LAUNCH' }, 2);
  }
}

// A hard deadline for the whole script, so a hung browser never hangs the Rust test.
export function deadline(ms, what) {
  const t = setTimeout(() => { fail(`${what}: overall deadline of ${ms} ms exceeded`, { code: 'DEADLINE' }); }, ms);
  t.unref();
  return t;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
