// stk-relay demo checkout. Plain ES module, no build step, no inline handlers.
// The subscribe token lives only in the closure of one attempt: it is never logged,
// stored or written into the page.
//
// The browser client is loaded at once, but through import() rather than a static
// import, so that if /v1/client.js cannot be loaded the page still works and says so
// instead of going dead.
const clientModule = import('/v1/client.js');
clientModule.catch(() => { /* reported when a payment needs it */ });

const OUTCOME_LABELS = {
  success: 'Success',
  cancelled: 'Cancelled by buyer',
  insufficient_funds: 'Insufficient funds',
  wrong_pin: 'Wrong PIN',
  timeout: 'Timed out',
  no_callback: 'No callback (reconciliation)',
};

// What a buyer reads for each failure `reason` (docs/api.md, "reason values").
// `retry: true` offers a fresh push with the same details as a friendly next step.
const REASONS = {
  CANCELLED_BY_USER: {
    title: 'Payment cancelled',
    text: 'You cancelled the M-Pesa prompt, so nothing was charged.',
    retry: true,
  },
  TIMEOUT: {
    title: 'The prompt timed out',
    text: 'The M-Pesa prompt timed out before it was answered, so nothing was charged.',
    retry: true,
  },
  WRONG_PIN: {
    title: 'That PIN didn’t work',
    text: 'The M-Pesa PIN entered was not correct, so nothing was charged.',
    retry: true,
  },
  INSUFFICIENT_FUNDS: {
    title: 'Not enough in M-Pesa',
    text: 'Your M-Pesa balance was too low for this payment, so nothing was charged. Top up, then try again.',
    retry: true,
  },
  SYSTEM_BUSY: {
    title: 'M-Pesa is busy',
    text: 'M-Pesa was too busy to complete the payment, so nothing was charged.',
    retry: true,
  },
  SUBSCRIBER_BUSY: {
    title: 'Your phone was busy',
    text: 'Another M-Pesa session was open on your phone. Close it, then try again.',
    retry: true,
  },
  PUSH_FAILED: {
    title: 'The prompt didn’t reach your phone',
    text: 'M-Pesa could not send the prompt, so nothing was charged.',
    retry: true,
  },
  DUPLICATE_REQUEST: {
    title: 'Payment already in progress',
    text: 'M-Pesa saw the same payment a moment ago. Check your M-Pesa messages before paying again.',
    retry: false,
  },
  DAILY_LIMIT: {
    title: 'Daily limit reached',
    text: 'This payment would go over your daily M-Pesa limit, so nothing was charged.',
    retry: false,
  },
  AMOUNT_LIMIT: {
    title: 'Amount not allowed',
    text: 'M-Pesa did not allow this amount, so nothing was charged.',
    retry: false,
  },
  PIN_LOCKED: {
    title: 'M-Pesa PIN locked',
    text: 'Your M-Pesa PIN is locked. Contact Safaricom to unlock it, then pay again.',
    retry: false,
  },
  UNCONFIRMED: {
    title: 'We couldn’t confirm this payment',
    text: 'M-Pesa did not confirm the result in time. If money left your account you will get an M-Pesa SMS, and the shop will see it too. Please don’t pay again until you have checked.',
    retry: false,
  },
};
const GENERIC_REASON = {
  title: 'Payment not completed',
  text: 'M-Pesa could not complete this payment, so nothing was charged.',
  retry: false,
};

const FIELD_NAMES = { phone: 'Phone number', amount: 'Amount', outcome: 'Simulator outcome' };

const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
const el = {
  form: $('pay-form'),
  fields: $('fields'),
  phone: $('phone'),
  amount: $('amount'),
  outcomeField: $('outcome-field'),
  outcome: $('outcome'),
  pay: $('pay'),
  payLabel: $('pay-label'),
  itemPrice: $('item-price'),
  total: $('total'),
  status: $('status'),
  title: $('status-title'),
  text: $('status-text'),
  pendingExtra: $('pending-extra'),
  countdown: $('countdown'),
  meterFill: document.querySelector('.meter-fill'),
  receiptBox: $('receipt-box'),
  receipt: $('receipt'),
  paidAmount: $('paid-amount'),
  reason: $('reason'),
  error: $('error'),
  actions: $('actions'),
  retry: $('retry'),
  startOver: $('start-over'),
  live: $('live'),
  simNote: $('sim-note'),
};

const config = { simulator: false, promptSecs: 60, outcomes: [] };
let current = null; // the attempt in flight or last shown: { id, handle, controller, timer, ... }
let attemptSeq = 0;

const kes = new Intl.NumberFormat('en-KE', { maximumFractionDigits: 0 });
const formatKes = (n) => `KES ${kes.format(n)}`;

// ---- validation (mirrors the server's rules; the server has the last word) ----

function normalisePhone(raw) {
  const compact = raw.trim().replace(/[\s-]/g, '');
  return /^(?:\+254|254|0)?[17]\d{8}$/.test(compact) ? compact : null;
}

function parseAmount(raw) {
  const s = raw.trim().replace(/,/g, '');
  if (!/^\d+$/.test(s)) return null;
  const n = Number(s);
  return n >= 1 && n <= 250000 ? n : null;
}

function setFieldError(name, message) {
  const input = el[name];
  const out = $(`${name}-error`);
  if (!input || !out) return false;
  out.textContent = message || '';
  if (message) input.setAttribute('aria-invalid', 'true');
  else input.removeAttribute('aria-invalid');
  return true;
}

function clearFieldErrors() {
  for (const name of Object.keys(FIELD_NAMES)) setFieldError(name, '');
}

function validate() {
  clearFieldErrors();
  const errors = [];
  if (!el.phone.value.trim()) errors.push(['phone', 'Enter the phone number registered with M-Pesa.']);
  else if (!normalisePhone(el.phone.value)) {
    errors.push(['phone', 'Enter a Kenyan mobile number, such as 0712 345 678 or +254 712 345 678.']);
  }
  if (parseAmount(el.amount.value) === null) {
    errors.push(['amount', 'Enter a whole number of shillings from 1 to 250,000.']);
  }
  for (const [name, message] of errors) setFieldError(name, message);
  if (errors.length) el[errors[0][0]].focus();
  return errors.length === 0;
}

// ---- rendering ----

function syncAmount() {
  const n = parseAmount(el.amount.value);
  const text = n === null ? 'KES —' : formatKes(n);
  el.itemPrice.textContent = text;
  el.total.textContent = text;
  el.payLabel.textContent = n === null ? 'Pay' : `Pay ${text}`;
}

let announceTimer = null;
function announce(message) {
  // Clear first so that the same sentence twice in a row is still announced; a newer
  // message replaces one not yet shown.
  if (announceTimer) window.clearTimeout(announceTimer);
  el.live.textContent = '';
  announceTimer = window.setTimeout(() => {
    announceTimer = null;
    el.live.textContent = message;
  }, 50);
}

// busy: a payment is being started or awaited. locked: a result (or an error) is on
// screen; the details stay as they were until "Change details" / "Start over".
function setForm(mode) {
  const busy = mode === 'busy';
  el.fields.disabled = mode !== 'open';
  el.pay.disabled = mode !== 'open';
  el.pay.setAttribute('aria-busy', busy ? 'true' : 'false');
}

function showStatus({ state, tone = 'neutral', title, text = '', checkoutId = null, source = null, phase = null }) {
  el.status.dataset.state = state;
  if (phase) el.status.dataset.phase = phase;
  else delete el.status.dataset.phase;
  el.status.dataset.tone = tone;
  if (checkoutId) el.status.dataset.checkoutId = checkoutId;
  else delete el.status.dataset.checkoutId;
  if (source) el.status.dataset.resultSource = source;
  else delete el.status.dataset.resultSource;
  el.title.textContent = title;
  el.text.textContent = text;
  el.pendingExtra.hidden = state !== 'pending' || phase === 'sending';
  el.receiptBox.hidden = state !== 'success';
  el.reason.hidden = state !== 'failed';
  if (state !== 'failed') el.reason.textContent = '';
  if (state !== 'error') el.error.textContent = '';
}

function showActions({ retry = null, startOver = null }) {
  el.retry.hidden = !retry;
  if (retry) el.retry.textContent = retry;
  el.startOver.hidden = !startOver;
  if (startOver) el.startOver.textContent = startOver;
  el.actions.hidden = !retry && !startOver;
}

function showIdle() {
  showStatus({
    state: 'idle',
    title: 'Ready when you are',
    text: 'Keep your phone unlocked and nearby, then tap Pay.',
  });
  showActions({});
}

function formatClock(secs) {
  const m = Math.floor(secs / 60);
  const s = secs % 60;
  return `${m}:${String(s).padStart(2, '0')}`;
}

function startCountdown(attempt) {
  const total = Math.max(1, config.promptSecs);
  const deadline = Date.now() + total * 1000;
  const tick = () => {
    if (attempt !== current || attempt.settled) return;
    const left = Math.max(0, Math.ceil((deadline - Date.now()) / 1000));
    el.meterFill.style.transform = `scaleX(${left / total})`;
    if (left > 0) {
      el.countdown.textContent = `The prompt is open for ${formatClock(left)}`;
      return;
    }
    window.clearInterval(attempt.timer);
    attempt.timer = null;
    el.title.textContent = 'Still confirming with M-Pesa…';
    el.text.textContent = 'This can take a little longer. You don’t need to do anything: this page updates by itself as soon as M-Pesa answers.';
    el.countdown.textContent = 'Waiting for M-Pesa’s answer';
    announce('Still confirming with M-Pesa. This page will update by itself.');
  };
  tick();
  attempt.timer = window.setInterval(tick, 1000);
}

function stopAttempt(attempt) {
  if (!attempt) return;
  attempt.settled = true;
  if (attempt.timer) window.clearInterval(attempt.timer);
  attempt.timer = null;
  if (attempt.controller) attempt.controller.abort();
  if (attempt.handle) {
    try { attempt.handle.close(); } catch { /* already closed */ }
  }
  attempt.handle = null;
}

function displayPhone(raw) {
  const d = raw.replace(/\D/g, '');
  const local = d.startsWith('254') ? `0${d.slice(3)}` : d.startsWith('0') ? d : `0${d}`;
  return `${local.slice(0, 4)} ${local.slice(4, 7)} ${local.slice(7)}`;
}

function showPending(attempt) {
  showStatus({
    state: 'pending',
    tone: 'neutral',
    title: 'Check your phone…',
    text: `Enter your M-Pesa PIN in the prompt on ${displayPhone(attempt.phone)} to pay ${formatKes(attempt.amount)}.`,
    checkoutId: attempt.checkoutId,
    phase: 'prompted',
  });
  showActions({});
  announce(`Check your phone. Enter your M-Pesa PIN to pay ${formatKes(attempt.amount)}.`);
}

function showFinal(attempt, state) {
  if (state.status === 'SUCCESS') {
    const amount = Number.isInteger(state.amount) ? state.amount : attempt.amount;
    showStatus({
      state: 'success',
      title: 'Payment received — thank you!',
      text: state.mpesaReceiptNumber
        ? 'M-Pesa will also send you a confirmation SMS.'
        : 'M-Pesa confirmed the payment. Your receipt number arrives by SMS from M-Pesa.',
      checkoutId: attempt.checkoutId,
      source: state.resultSource,
    });
    el.receipt.textContent = state.mpesaReceiptNumber || 'Sent by SMS';
    el.receipt.dataset.present = state.mpesaReceiptNumber ? 'true' : 'false';
    el.paidAmount.textContent = formatKes(amount);
    showActions({ startOver: 'Make another payment' });
    announce(state.mpesaReceiptNumber
      ? `Payment received. M-Pesa receipt ${state.mpesaReceiptNumber}, ${formatKes(amount)}.`
      : `Payment received, ${formatKes(amount)}. Your receipt arrives by SMS.`);
  } else {
    const info = REASONS[state.reason] || GENERIC_REASON;
    showStatus({
      state: 'failed',
      tone: info.retry ? 'friendly' : 'neutral',
      title: info.title,
      checkoutId: attempt.checkoutId,
      source: state.resultSource,
    });
    el.reason.textContent = info.text;
    el.reason.dataset.reason = state.reason || '';
    showActions(info.retry
      ? { retry: 'No problem — try again', startOver: 'Change details' }
      : { startOver: 'Start over' });
    announce(`${info.title}. ${info.text}${info.retry && !/try again/i.test(info.text) ? ' You can try again.' : ''}`);
  }
  setForm('locked');
  const next = el.retry.hidden ? el.title : el.retry;
  next.focus();
}

function showError(title, message, { retry = true } = {}) {
  showStatus({ state: 'error', tone: 'error', title, checkoutId: current && current.checkoutId });
  el.error.textContent = message;
  showActions(retry ? { retry: 'Try again', startOver: 'Change details' } : { startOver: 'Start over' });
  setForm('locked');
}

// ---- talking to the server ----

function errorFromResponse(status, body) {
  const code = body && body.error && body.error.code;
  const message = body && body.error && typeof body.error.message === 'string' ? body.error.message : '';
  return { status, code: code || `HTTP_${status}`, message };
}

function humanFieldMessage(field, message) {
  const rest = message.slice(field.length).replace(/^\s*/, '');
  return `${FIELD_NAMES[field]} ${rest}`.trim();
}

async function postPay(details) {
  const body = { phone: details.phone, amount: details.amount };
  if (config.simulator && details.outcome) body.outcome = details.outcome;
  let res;
  try {
    res = await fetch('/demo/pay', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify(body),
      cache: 'no-store',
    });
  } catch {
    return { error: { status: 0, code: 'NETWORK', message: '' } };
  }
  let json = null;
  try { json = await res.json(); } catch { json = null; }
  if (!res.ok) return { error: errorFromResponse(res.status, json) };
  if (!json || typeof json.checkout_request_id !== 'string' || typeof json.token !== 'string') {
    return { error: { status: res.status, code: 'BAD_RESPONSE', message: '' } };
  }
  return { ok: json };
}

function explainPayError(err) {
  switch (err.code) {
    case 'NETWORK':
      return ['We couldn’t reach the shop', 'Check your internet connection, then try again. No prompt was sent.'];
    case 'TOO_MANY_CONNECTIONS':
    case 'RATE_LIMITED':
      return ['Too many attempts', 'Please wait a moment, then try again.'];
    case 'SERVICE_UNAVAILABLE':
      return ['Payments are briefly unavailable', 'The payment service is busy right now. Please try again in a moment.'];
    case 'DARAJA_ERROR':
      return ['M-Pesa didn’t accept the request', 'M-Pesa could not send the prompt. Please try again in a moment.'];
    case 'DARAJA_TIMEOUT':
      return ['M-Pesa is slow to answer', 'M-Pesa did not answer in time. If a prompt reaches your phone you can still approve it; otherwise try again.'];
    default:
      if (err.status === 429) return ['Too many attempts', 'Please wait a moment, then try again.'];
      return ['We couldn’t start the payment', 'Something went wrong on our side. Please try again in a moment.'];
  }
}

async function startPayment(details) {
  stopAttempt(current);
  const attempt = { seq: ++attemptSeq, ...details, checkoutId: null, handle: null, controller: null, timer: null, settled: false };
  current = attempt;
  clearFieldErrors();
  setForm('busy');
  showStatus({ state: 'pending', phase: 'sending', title: 'Sending the prompt…', text: 'Contacting M-Pesa. This takes a second or two.' });
  showActions({});
  announce('Sending the payment prompt to your phone.');

  const result = await postPay(details);
  if (attempt !== current) return;

  if (result.error) {
    const err = result.error;
    const field = err.code === 'VALIDATION_FAILED' && /^(phone|amount|outcome)\b/.exec(err.message);
    if (field) {
      // Show the message next to the field it names, and let the buyer fix it.
      attempt.settled = true;
      setForm('open');
      setFieldError(field[1], humanFieldMessage(field[1], err.message));
      showIdle();
      announce(`Please check the ${FIELD_NAMES[field[1]].toLowerCase()}.`);
      el[field[1]].focus();
      return;
    }
    const [title, message] = explainPayError(err);
    attempt.settled = true;
    showError(title, message);
    return;
  }

  const pay = result.ok;
  attempt.checkoutId = pay.checkout_request_id;
  showPending(attempt);
  startCountdown(attempt);
  el.title.focus();

  let watchPayment;
  try {
    ({ watchPayment } = await clientModule);
  } catch {
    watchPayment = null;
  }
  if (attempt !== current || attempt.settled) return;
  if (typeof watchPayment !== 'function') {
    stopAttempt(attempt);
    showError('We couldn’t follow this payment', 'Live updates could not be loaded. If you approved the payment on your phone, M-Pesa will send you an SMS; please check it before paying again.', { retry: false });
    return;
  }

  const controller = new AbortController();
  attempt.controller = controller;
  const onState = (state) => {
    if (attempt !== current || attempt.settled || !state) return;
    if (state.status === 'SUCCESS' || state.status === 'FAILED') {
      attempt.settled = true;
      if (attempt.timer) window.clearInterval(attempt.timer);
      attempt.timer = null;
      showFinal(attempt, state);
    }
  };
  try {
    attempt.handle = watchPayment({
      baseUrl: window.location.origin,
      checkoutRequestId: pay.checkout_request_id,
      token: pay.token,
      signal: controller.signal,
      onUpdate: onState,
      onFinal: onState,
      onError: (err) => {
        if (attempt !== current || attempt.settled) return;
        stopAttempt(attempt);
        const code = err && err.code;
        const message = code === 'UNAUTHORIZED' || code === 'NOT_FOUND' || code === 'PAYMENT_NOT_FOUND'
          ? 'This page can no longer follow the payment. If you approved it on your phone, M-Pesa will send you an SMS; please check it before paying again.'
          : 'We lost the connection while waiting for M-Pesa. If you approved the payment, M-Pesa will send you an SMS; please check it before paying again.';
        showError('We couldn’t follow this payment', message, { retry: false });
        el.title.focus();
      },
    });
  } catch {
    if (attempt !== current) return;
    stopAttempt(attempt);
    showError('We couldn’t follow this payment', 'Live updates are not available. If you approved the payment, M-Pesa will send you an SMS.', { retry: false });
  }
}

function readDetails() {
  return {
    phone: el.phone.value.trim(),
    amount: parseAmount(el.amount.value),
    outcome: config.simulator && !el.outcomeField.hidden ? el.outcome.value : null,
  };
}

// ---- wiring ----

el.form.addEventListener('submit', (event) => {
  event.preventDefault();
  if (current && !current.settled) return; // a payment is in flight
  if (!validate()) return;
  startPayment(readDetails());
});

el.retry.addEventListener('click', () => {
  if (!current || !current.settled) return;
  // Same details as the last attempt, whatever the (disabled) fields show.
  const { phone, amount, outcome } = current;
  startPayment({ phone, amount, outcome });
});

el.startOver.addEventListener('click', () => {
  stopAttempt(current);
  current = null;
  setForm('open');
  clearFieldErrors();
  showIdle();
  announce('You can change your details now.');
  el.phone.focus();
});

el.amount.addEventListener('input', syncAmount);
for (const name of ['phone', 'amount']) {
  el[name].addEventListener('input', () => {
    if (el[name].getAttribute('aria-invalid') === 'true') setFieldError(name, '');
  });
}

async function loadConfig() {
  try {
    const res = await fetch('/demo/config.json', { cache: 'no-store' });
    if (!res.ok) throw new Error(`config ${res.status}`);
    const json = await res.json();
    config.simulator = json.simulator === true;
    if (Number.isFinite(json.prompt_secs) && json.prompt_secs > 0) config.promptSecs = Math.round(json.prompt_secs);
    config.outcomes = Array.isArray(json.outcomes) ? json.outcomes.filter((o) => typeof o === 'string') : [];
  } catch {
    config.simulator = false; // without a config, behave like a real shop
  }
  if (config.simulator && config.outcomes.length) {
    el.outcome.replaceChildren(...config.outcomes.map((id) => {
      const option = document.createElement('option');
      option.value = id;
      option.textContent = OUTCOME_LABELS[id] || id.replace(/_/g, ' ');
      return option;
    }));
    el.outcome.value = config.outcomes.includes('success') ? 'success' : config.outcomes[0];
    el.outcomeField.hidden = false;
    el.simNote.hidden = false;
  } else {
    el.outcomeField.hidden = true;
    el.simNote.hidden = true;
  }
  if (!current) setForm('open'); // Pay starts disabled in the markup until now
  document.documentElement.dataset.ready = 'true';
}

syncAmount();
showIdle();
loadConfig();
