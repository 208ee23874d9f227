// Runs the browser client (/v1/client.js) in a real page against running gateways and
// records everything it reports. See README.md for the env vars and the output lines.
import {
  baseUrl, deadline, emit, env, fail, intEnv, launch, log, onExit, requireEnv, sleep,
} from './lib.mjs';

const base = baseUrl();
const checkoutRequestId = requireEnv('CHECKOUT_ID');
const token = requireEnv('TOKEN');
const timeoutMs = intEnv('TIMEOUT_MS', 60000);
const settleMs = intEnv('SETTLE_MS', 1500);
let extra = {};
try {
  extra = JSON.parse(env('WATCH_OPTIONS', '{}'));
  if (!extra || typeof extra !== 'object' || Array.isArray(extra)) throw new Error('not an object');
} catch (err) {
  await fail(`WATCH_OPTIONS must be a JSON object: ${err.message}`, { code: 'USAGE' }, 2);
}

deadline(timeoutMs + settleMs + 45000, 'watch.mjs');

const browser = await launch();
onExit(() => browser.close());
const context = await browser.newContext();
// The page is /healthz; keep the browser's automatic favicon request out of the console.
await context.route('**/favicon.ico', (route) => route.fulfill({ status: 204, body: '' }));
const page = await context.newPage();

const pageProblems = [];
page.on('console', (msg) => {
  if (msg.type() === 'error') pageProblems.push({ t: Date.now(), kind: 'console', text: msg.text() });
});
page.on('pageerror', (err) => pageProblems.push({ t: Date.now(), kind: 'pageerror', text: err.message }));

const resp = await page.goto(`${base}/healthz`, { timeout: 30000 }).catch((e) => e);
if (!resp || resp instanceof Error || !resp.ok()) {
  await fail(`GET ${base}/healthz failed: ${resp instanceof Error ? resp.message.split('\n')[0] : resp && resp.status()}`);
}

// Start the watch inside the page. Everything the client reports is kept in
// window.__watch; the token stays in the page and is never printed.
const started = await page.evaluate(async ({ checkoutRequestId, token, extra }) => {
  const rec = { updates: [], finals: [], errors: [], startedAt: Date.now() };
  window.__watch = rec;
  const copy = (v) => JSON.parse(JSON.stringify(v === undefined ? null : v));
  const transport = () => {
    const h = window.__watchHandle;
    if (!h) return null;
    const t = typeof h.transport === 'function' ? h.transport() : h.transport;
    return typeof t === 'string' ? t : null;
  };
  let mod;
  try {
    mod = await import('/v1/client.js');
  } catch (err) {
    return { ok: false, error: `import /v1/client.js failed: ${err && err.message}` };
  }
  if (typeof mod.watchPayment !== 'function') return { ok: false, error: '/v1/client.js exports no watchPayment' };
  const controller = new AbortController();
  window.__watchAbort = controller;
  try {
    window.__watchHandle = mod.watchPayment({
      ...extra,
      baseUrl: location.origin,
      checkoutRequestId,
      token,
      signal: controller.signal,
      onUpdate: (state) => rec.updates.push({ t: Date.now(), transport: transport(), state: copy(state) }),
      onFinal: (state) => rec.finals.push({ t: Date.now(), transport: transport(), state: copy(state) }),
      onError: (err) => rec.errors.push({
        t: Date.now(),
        transport: transport(),
        code: err && err.code !== undefined ? String(err.code) : null,
        status: err && typeof err.status === 'number' ? err.status : null,
        name: err && err.name ? String(err.name) : null,
        message: err && err.message ? String(err.message) : String(err),
      }),
    });
  } catch (err) {
    return { ok: false, error: `watchPayment threw: ${err && err.message}` };
  }
  const h = window.__watchHandle;
  return {
    ok: true,
    startedAt: rec.startedAt,
    hasClose: !!h && typeof h.close === 'function',
    transport: transport(),
  };
}, { checkoutRequestId, token, extra });

if (!started.ok) await fail(started.error, { problems: pageProblems });
if (!started.hasClose) log('warning: watchPayment returned no handle with close()');
emit({ event: 'ready', t: Date.now(), startedAt: started.startedAt, transport: started.transport });

const snapshot = () => page.evaluate(() => {
  const h = window.__watchHandle;
  let transport = null;
  if (h) {
    const t = typeof h.transport === 'function' ? h.transport() : h.transport;
    if (typeof t === 'string') transport = t;
  }
  return { ...window.__watch, transport };
});

// Wait for onFinal (or for the client to give up with onError), bounded.
const until = Date.now() + timeoutMs;
// Each update is also printed as it arrives ({"event":"update",…}), so a test can act
// once the browser holds the snapshot (kill its gateway, send the callback).
let emitted = 0;
const emitUpdates = (r) => {
  for (; emitted < r.updates.length; emitted++) {
    const u = r.updates[emitted];
    emit({ event: 'update', t: u.t, transport: u.transport, status: u.state && u.state.status, version: u.state && u.state.version });
  }
};
let rec = await snapshot();
emitUpdates(rec);
while (rec.finals.length === 0 && rec.errors.length === 0 && Date.now() < until) {
  await sleep(50);
  rec = await snapshot();
  emitUpdates(rec);
}
const ended = rec.finals.length > 0 || rec.errors.length > 0;
if (ended) {
  await sleep(settleMs); // anything arriving now would be a duplicate
  rec = await snapshot();
}

const out = {
  finals: rec.finals.length,
  final: rec.finals.length ? rec.finals[0].state : null,
  finalAt: rec.finals.length ? rec.finals[0].t : null,
  transport: rec.transport,
  startedAt: rec.startedAt,
  updates: rec.updates,
  finalEvents: rec.finals,
  errors: rec.errors,
  problems: pageProblems,
};

try {
  await page.evaluate(() => {
    try { if (window.__watchHandle) window.__watchHandle.close(); } catch { /* ignore */ }
  });
} catch { /* page gone */ }

if (!ended) {
  await fail(`no onFinal or onError within ${timeoutMs} ms`, { ...out, code: 'TIMEOUT' });
}
emit({ event: 'done', ...out });
onExit(null);
await browser.close();
process.exit(0);
