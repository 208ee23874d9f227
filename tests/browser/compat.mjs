// The Durable Objects design's browser side, in a real page: what a component written for
// that design does. It opens the session's WebSocket on one gateway (the page's origin,
// WS_BASE) and posts the initiate to another (INITIATE_BASE, cross-origin, so CORS
// applies), then records every message until PAYMENT_COMPLETED or a close.
//
// env: WS_BASE, INITIATE_BASE, SESSION_TOKEN, BODY (the initiate's JSON body),
//      TIMEOUT_MS (default 60000), SETTLE_MS (default 1500).
// stdout: {"event":"initiated","status":…,"body":…} once the initiate has answered, then
//         {"event":"done","messages":[…],"close":{code,reason}|null,"wsError":bool,
//          "initiate":{status,body}}. Exit 0 whenever it could observe the outcome (the
//         Rust test asserts on it), 1 on a timeout, 2 on bad usage.
import { deadline, emit, env, fail, intEnv, launch, onExit, requireEnv, sleep } from './lib.mjs';

const wsBase = requireEnv('WS_BASE').replace(/\/$/, '');
const initiateBase = requireEnv('INITIATE_BASE').replace(/\/$/, '');
const token = requireEnv('SESSION_TOKEN');
let body;
try {
  body = JSON.parse(requireEnv('BODY'));
} catch (err) {
  await fail(`BODY must be JSON: ${err.message}`, { code: 'USAGE' }, 2);
}
const timeoutMs = intEnv('TIMEOUT_MS', 60000);
const settleMs = intEnv('SETTLE_MS', 1500);
deadline(timeoutMs + settleMs + 45000, 'compat.mjs');

const browser = await launch();
onExit(() => browser.close());
const context = await browser.newContext();
await context.route('**/favicon.ico', (route) => route.fulfill({ status: 204, body: '' }));
const page = await context.newPage();
const resp = await page.goto(`${wsBase}/healthz`, { timeout: 30000 }).catch((e) => e);
if (!resp || resp instanceof Error || !resp.ok()) await fail(`GET ${wsBase}/healthz failed`);

// Open the socket first, as the design's component does, then initiate elsewhere.
const initiate = await page.evaluate(async ({ wsBase, initiateBase, token, body }) => {
  const rec = { messages: [], close: null, wsError: false, opened: false };
  window.__compat = rec;
  const wsUrl = `${wsBase.replace(/^http/, 'ws')}/sessions/${encodeURIComponent(token)}/websocket`;
  const ws = new WebSocket(wsUrl);
  window.__compatWs = ws;
  ws.onmessage = (e) => { try { rec.messages.push(JSON.parse(e.data)); } catch { rec.messages.push({ unparsed: String(e.data) }); } };
  ws.onerror = () => { rec.wsError = true; };
  ws.onclose = (e) => { rec.close = { code: e.code, reason: e.reason }; };
  await new Promise((resolve) => {
    ws.addEventListener('open', () => { rec.opened = true; resolve(); });
    ws.addEventListener('close', resolve);
  });
  const r = await fetch(`${initiateBase}/sessions/${encodeURIComponent(token)}/initiate`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  }).catch((err) => ({ status: 0, text: async () => String(err) }));
  const text = await r.text();
  let parsed = null;
  try { parsed = JSON.parse(text); } catch { parsed = text; }
  return { status: r.status, body: parsed, opened: rec.opened };
}, { wsBase, initiateBase, token, body });
emit({ event: 'initiated', status: initiate.status, body: initiate.body, opened: initiate.opened });

const snapshot = () => page.evaluate(() => window.__compat);
const until = Date.now() + timeoutMs;
let rec = await snapshot();
const finished = (r) => r.close !== null || r.messages.some((m) => m && m.type === 'PAYMENT_COMPLETED');
while (!finished(rec) && Date.now() < until) {
  await sleep(50);
  rec = await snapshot();
}
if (!finished(rec)) await fail(`no PAYMENT_COMPLETED or close within ${timeoutMs} ms`, { ...rec, initiate });
await sleep(settleMs); // a second PAYMENT_COMPLETED arriving now would be a duplicate
rec = await snapshot();
emit({ event: 'done', ...rec, initiate });
onExit(null);
await browser.close();
