// Drives the demo checkout (GET /demo/) in headless Chromium like a buyer would, and checks
// what the page shows for one simulator outcome. See README.md for the env vars and output.
import {
  baseUrl, deadline, emit, env, fail, intEnv, launch, log, onExit, requireEnv, sleep,
} from './lib.mjs';

const OUTCOMES = ['success', 'cancelled', 'insufficient_funds', 'wrong_pin', 'timeout', 'no_callback'];
const RETRYABLE = new Set(['cancelled', 'insufficient_funds', 'wrong_pin', 'timeout']);

// What the page must say for each outcome that ends FAILED: the `reason` code it got and
// words of the human sentence shown for it.
const FAILED_TEXT = {
  cancelled: { code: 'CANCELLED_BY_USER', words: /cancelled the M-Pesa prompt/i },
  insufficient_funds: { code: 'INSUFFICIENT_FUNDS', words: /balance was too low/i },
  wrong_pin: { code: 'WRONG_PIN', words: /PIN entered was not correct/i },
  timeout: { code: 'TIMEOUT', words: /timed out/i },
  no_callback: { code: 'UNCONFIRMED', words: /did not confirm/i },
};

const VIEWPORTS = {
  phone: { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 },
  desktop: { viewport: { width: 1280, height: 900 } },
};

const base = baseUrl();
const outcome = env('OUTCOME', 'success');
const expect = requireEnv('EXPECT');
const screenshot = env('SCREENSHOT', null);
const viewportName = env('VIEWPORT', 'desktop');
const phone = env('PHONE', '0712345678');
const amount = intEnv('AMOUNT', 100);
const finalTimeout = intEnv('TIMEOUT_MS', 90000);

if (!OUTCOMES.includes(outcome)) await fail(`OUTCOME must be one of ${OUTCOMES.join(', ')}`, { code: 'USAGE' }, 2);
if (!['success', 'failed'].includes(expect)) await fail('EXPECT must be success or failed', { code: 'USAGE' }, 2);
if (!VIEWPORTS[viewportName]) await fail('VIEWPORT must be phone or desktop', { code: 'USAGE' }, 2);

deadline(finalTimeout + 60000, 'demo.mjs');
const started = Date.now();

const browser = await launch();
onExit(() => browser.close());
const context = await browser.newContext(VIEWPORTS[viewportName]);
const page = await context.newPage();

const problems = [];
page.on('console', (msg) => {
  if (msg.type() === 'error') {
    const where = msg.location() && msg.location().url;
    problems.push(`console error: ${msg.text()}${where ? ` (${where.split('?')[0]})` : ''}`);
  }
});
page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
page.on('requestfailed', (req) => {
  // An aborted stream (the client closing its WebSocket/SSE when the test ends) is not a fault.
  const failure = req.failure() && req.failure().errorText;
  if (failure && !/ERR_ABORTED/.test(failure)) problems.push(`request failed: ${req.method()} ${req.url().split('?')[0]} ${failure}`);
});

// Records, from the first paint on, every text the aria-live regions showed and every
// change of the status container (state, phase, checkout id, Pay disabled or not), so
// that short-lived states are not missed between two polls.
await page.addInitScript(() => {
  const seen = { live: [], states: [] };
  window.__demoSeen = seen;
  const lastLive = new Map();
  let lastState = '';
  const record = () => {
    for (const node of document.querySelectorAll('[aria-live]')) {
      const text = node.textContent.trim();
      if (text && lastLive.get(node) !== text) {
        lastLive.set(node, text);
        seen.live.push({ t: Date.now(), text });
      }
    }
    const status = document.querySelector('[data-testid="status"]');
    const pay = document.querySelector('[data-testid="pay"]');
    if (status) {
      const snap = {
        state: status.dataset.state || null,
        phase: status.dataset.phase || null,
        checkoutId: status.dataset.checkoutId || null,
        payDisabled: pay ? pay.disabled : null,
      };
      const key = JSON.stringify(snap);
      if (key !== lastState) {
        lastState = key;
        seen.states.push({ t: Date.now(), ...snap });
      }
    }
  };
  new MutationObserver(record).observe(document, {
    subtree: true, childList: true, characterData: true, attributes: true,
  });
});

const seen = () => page.evaluate(() => window.__demoSeen);
const tid = (id) => page.locator(`[data-testid="${id}"]`);
const textOf = async (id) => ((await tid(id).textContent()) || '').trim();

async function waitFor(what, ms, check) {
  const until = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > until) return null;
    await sleep(100);
  }
}

async function failWith(message) {
  let saw = null;
  try {
    saw = {
      state: await tid('status').getAttribute('data-state'),
      title: await textOf('status-title'),
      ...(await seen()),
    };
  } catch { /* page gone */ }
  if (screenshot) {
    try { await page.screenshot({ path: screenshot, fullPage: true }); } catch { /* ignore */ }
  }
  await fail(message, { outcome, expect, problems, saw });
}

function checkProblems() {
  return problems.length ? failWith(problems.join('; ')) : null;
}

// ---- open the page ----
const resp = await page.goto(`${base}/demo/`, { waitUntil: 'load', timeout: 30000 }).catch((e) => e);
if (!resp || resp instanceof Error || !resp.ok()) {
  await failWith(`GET /demo/ failed: ${resp instanceof Error ? resp.message.split('\n')[0] : resp && resp.status()}`);
}
const ready = await waitFor('config', 15000, () => page.evaluate(() => document.documentElement.dataset.ready === 'true'));
if (!ready) await failWith('the page never finished loading /demo/config.json (no data-ready)');
await checkProblems();

const initialState = await tid('status').getAttribute('data-state');
if (initialState !== 'idle') await failWith(`status starts as ${initialState}, expected idle`);

// No sideways scrolling at this width (the page must fit a phone screen).
const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
if (overflow > 1) await failWith(`page is ${overflow}px wider than the ${viewportName} viewport`);

// ---- fill and pay ----
const outcomeVisible = await tid('outcome').isVisible();
if (!outcomeVisible) await failWith('the "Simulator outcome" picker is not shown (is the simulator on?)');
const outcomeLabel = await page.locator('label[for="outcome"]').textContent();
if (!/simulator outcome/i.test(outcomeLabel || '')) await failWith(`outcome label reads ${JSON.stringify(outcomeLabel)}`);

await tid('phone').fill(phone);
await tid('amount').fill(String(amount));
await tid('outcome').selectOption(outcome);
await tid('pay').click();

const pending = await waitFor('pending', 15000, async () => {
  const s = await seen();
  return s.states.find((x) => x.state === 'pending' && x.checkoutId) || (
    s.states.some((x) => x.state === 'error') ? { error: true } : null);
});
if (!pending) await failWith('no pending payment with a checkout id within 15 s of Pay');
if (pending.error) await failWith(`Pay led to an error: ${await textOf('error')}`);
if (pending.payDisabled !== true) await failWith('Pay stayed enabled while the payment was pending');
const firstId = pending.checkoutId;

const announced = await waitFor('announce', 5000, async () => (await seen()).live.some((x) => /check your phone/i.test(x.text)));
if (!announced) await failWith('the aria-live region never announced "Check your phone"');

// ---- wait for the result ----
const finalState = await waitFor('final', finalTimeout, async () => {
  const s = await tid('status').getAttribute('data-state');
  return ['success', 'failed', 'error'].includes(s) ? s : null;
});
if (!finalState) await failWith(`no result within ${finalTimeout} ms (still ${await tid('status').getAttribute('data-state')})`);
await sleep(300); // let the announcement land
await checkProblems();

const title = await textOf('status-title');
const tone = await tid('status').getAttribute('data-tone');
const resultSource = await tid('status').getAttribute('data-result-source');
const alertText = await textOf('error');
const result = {
  event: 'done',
  ok: true,
  outcome,
  expect,
  viewport: viewportName,
  state: finalState,
  title,
  tone,
  resultSource,
  reasonCode: null,
  reason: null,
  receipt: null,
  amount: null,
  retry: null,
  checkoutIds: [firstId],
};

if (finalState !== expect) {
  await failWith(`expected ${expect}, page shows ${finalState}: ${title} ${await textOf('reason')} ${alertText}`.trim());
}
if (alertText) await failWith(`role="alert" carries text for a ${finalState} payment: ${alertText}`);

const live = (await seen()).live.map((x) => x.text);
const lastLive = live[live.length - 1] || '';

if (finalState === 'success') {
  if (!(await tid('receipt').isVisible())) await failWith('success shown without the receipt box');
  const receipt = await textOf('receipt');
  const present = (await tid('receipt').getAttribute('data-present')) === 'true';
  result.receipt = present ? receipt : null;
  result.amount = await textOf('paid-amount');
  if (outcome === 'no_callback') {
    // Settled by STK Push Query: M-Pesa's answer carries no receipt number.
    if (present && !/^[A-Z0-9]{6,20}$/.test(receipt)) await failWith(`receipt ${JSON.stringify(receipt)} is not an M-Pesa receipt`);
  } else if (!present || !/^[A-Z0-9]{6,20}$/.test(receipt)) {
    await failWith(`success without an M-Pesa receipt number (shows ${JSON.stringify(receipt)})`);
  }
  const wantAmount = `KES ${new Intl.NumberFormat('en-KE').format(amount)}`;
  if (result.amount !== wantAmount) await failWith(`amount paid shows ${JSON.stringify(result.amount)}, expected ${wantAmount}`);
  if (!/payment received/i.test(lastLive)) await failWith(`success not announced (last announcement: ${JSON.stringify(lastLive)})`);
  if (present && !lastLive.includes(receipt)) await failWith('the announcement does not read out the receipt number');
} else {
  result.reasonCode = await tid('reason').getAttribute('data-reason');
  result.reason = await textOf('reason');
  const want = FAILED_TEXT[outcome];
  if (want) {
    if (result.reasonCode !== want.code) await failWith(`reason ${result.reasonCode}, expected ${want.code}`);
    if (!want.words.test(result.reason)) await failWith(`reason text ${JSON.stringify(result.reason)} does not match ${want.words}`);
  } else if (!result.reason) {
    await failWith('failed without a reason text');
  }
  if (!lastLive.includes(title)) await failWith(`failure not announced (last announcement: ${JSON.stringify(lastLive)})`);
}

if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });

const retryVisible = await tid('retry').isVisible();
if (finalState === 'failed' && RETRYABLE.has(outcome)) {
  if (!retryVisible) await failWith('no "Try again" button after a retryable failure');
  const label = await textOf('retry');
  if (!/try again/i.test(label)) await failWith(`retry button reads ${JSON.stringify(label)}`);
  if (tone !== 'friendly') await failWith(`a retryable failure is shown with tone ${tone}, expected friendly (not an error screen)`);
  if (!(await tid('start-over').isVisible())) await failWith('no "Change details" link next to Try again');

  const before = (await seen()).states.length;
  await tid('retry').click();
  const again = await waitFor('retry', 15000, async () => {
    const s = (await seen()).states.slice(before);
    return s.find((x) => x.state === 'pending' && x.checkoutId && x.checkoutId !== firstId) || (
      s.some((x) => x.state === 'error') ? { error: true } : null);
  });
  if (!again) await failWith('Try again did not start a new pending payment within 15 s');
  if (again.error) await failWith(`Try again led to an error: ${await textOf('error')}`);
  if (again.payDisabled !== true) await failWith('Pay stayed enabled during the retried payment');
  result.checkoutIds.push(again.checkoutId);
  result.retry = 'started';
} else if (finalState === 'success' && retryVisible) {
  await failWith('a "Try again" button is shown after a success');
}

await sleep(200);
await checkProblems();

result.announcements = live;
result.elapsedMs = Date.now() - started;
if (screenshot) result.screenshot = screenshot;
emit(result);
onExit(null);
await browser.close();
process.exit(0);
