/**
 * @stk-relay/client: the browser side of stk-relay.
 *
 * `watchPayment()` follows one M-Pesa STK Push payment from the page that started it until
 * the payment is final (SUCCESS or FAILED), and hands every new state to the page.
 *
 * - Transport: WebSocket first (`/v1/payments/{id}/ws`); Server-Sent Events
 *   (`/v1/payments/{id}/events`) when WebSockets cannot work here; polling
 *   `GET /v1/payments/{id}` when neither streaming transport can.
 * - Reconnects with exponential backoff and full jitter; every connection starts with a
 *   snapshot, so nothing is missed while disconnected.
 * - Keeps the state with the highest `version`; calls `onFinal` exactly once.
 * - Stops by itself once final, on a permanent error (401, 404, ...), on `close()` or when
 *   the given `AbortSignal` aborts. After it stops no callback fires.
 *
 * Single self-contained ES module with no dependencies: the gateway serves this very file
 * at `/v1/client.js`. See docs/client.md and clients/js/README.md.
 *
 * @module @stk-relay/client
 */

/** Transport names, in the default order of preference. */
export const TRANSPORTS = Object.freeze(['websocket', 'sse', 'polling']);

const DEFAULT_INITIAL_MS = 500;
const DEFAULT_MAX_MS = 10000;
const DEFAULT_POLL_INTERVAL_MS = 3000;
const MAX_POLL_INTERVAL_MS = 60000;
const DEFAULT_FAILURES_BEFORE_FALLBACK = 3;
const DEFAULT_CORRECTION_WINDOW_MS = 5 * 60 * 1000;
const DEFAULT_CORRECTION_INTERVAL_MS = 15000;

/**
 * A permanent failure: retrying cannot fix it, so the watcher stopped.
 *
 * `code` is one of `UNAUTHORIZED` (401: token missing, wrong or expired), `NOT_FOUND`
 * (404: no such payment), `FORBIDDEN` (403), `BAD_REQUEST` (400 or another 4xx the client
 * cannot recover from) or `NO_TRANSPORT` (none of the allowed transports exists here).
 * `status` is the HTTP status when there was one, `serverCode` the `error.code` of the
 * server's JSON body when it sent one (e.g. `PAYMENT_NOT_FOUND`).
 */
export class PaymentError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{status?: number|null, serverCode?: string|null}} [details]
   */
  constructor(code, message, details = {}) {
    super(message);
    this.name = 'PaymentError';
    this.code = code;
    this.status = details.status ?? null;
    this.serverCode = details.serverCode ?? null;
  }
}

/**
 * Delay before retry number `attempt` (0 for the first retry): full jitter,
 * a uniformly random value in `[0, min(maxMs, initialMs * 2^attempt))`.
 *
 * @param {number} attempt
 * @param {number} initialMs
 * @param {number} maxMs
 * @param {() => number} [random] returns a number in [0, 1)
 * @returns {number} milliseconds, an integer
 */
export function backoffDelay(attempt, initialMs, maxMs, random = Math.random) {
  const n = Math.min(Math.max(0, Math.floor(attempt) || 0), 30);
  const ceiling = Math.min(maxMs, initialMs * 2 ** n);
  const r = Math.min(Math.max(Number(random()) || 0, 0), 1);
  return Math.min(Math.floor(r * ceiling), maxMs);
}

/** True for a STATE as the server sends it (only the fields this client relies on). */
function isState(s) {
  return (
    s !== null &&
    typeof s === 'object' &&
    Number.isInteger(s.version) &&
    s.version > 0 &&
    typeof s.status === 'string'
  );
}

/** True when the state is final: anything but PENDING. */
function isFinal(s) {
  return s.status !== 'PENDING';
}

/** Builds the three endpoint URLs; the token only ever goes into these strings. */
function endpoints(baseUrl, id, token) {
  let base;
  if (/^[a-z][a-z0-9+.-]*:/i.test(baseUrl)) {
    base = new URL(baseUrl);
  } else if (globalThis.location && globalThis.location.href) {
    base = new URL(baseUrl || '/', globalThis.location.href);
  } else {
    throw new TypeError('watchPayment: baseUrl must be an absolute URL outside a web page');
  }
  let scheme = base.protocol;
  if (scheme === 'ws:') scheme = 'http:';
  if (scheme === 'wss:') scheme = 'https:';
  if (scheme !== 'http:' && scheme !== 'https:') {
    throw new TypeError('watchPayment: baseUrl must be an http(s) URL');
  }
  const path = base.pathname.replace(/\/+$/, '') + '/v1/payments/' + encodeURIComponent(id);
  const query = '?token=' + encodeURIComponent(token);
  const httpOrigin = scheme + '//' + base.host;
  const wsOrigin = (scheme === 'https:' ? 'wss:' : 'ws:') + '//' + base.host;
  return {
    get: httpOrigin + path + query,
    sse: httpOrigin + path + '/events' + query,
    websocket: wsOrigin + path + '/ws' + query,
  };
}

function positiveNumber(value, fallback, name) {
  if (value === undefined || value === null) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 1) {
    throw new TypeError(`watchPayment: ${name} must be a number >= 1`);
  }
  return value;
}

function optionalFunction(value, name) {
  if (value !== undefined && value !== null && typeof value !== 'function') {
    throw new TypeError(`watchPayment: ${name} must be a function`);
  }
  return value || undefined;
}

function normalizeOptions(options) {
  if (!options || typeof options !== 'object') {
    throw new TypeError('watchPayment: options object required');
  }
  const o = options;
  if (typeof o.checkoutRequestId !== 'string' || o.checkoutRequestId === '') {
    throw new TypeError('watchPayment: checkoutRequestId must be a non-empty string');
  }
  if (typeof o.token !== 'string' || o.token === '') {
    throw new TypeError('watchPayment: token must be a non-empty string');
  }
  if (typeof o.onUpdate !== 'function') throw new TypeError('watchPayment: onUpdate must be a function');
  if (typeof o.onFinal !== 'function') throw new TypeError('watchPayment: onFinal must be a function');

  let transports = TRANSPORTS;
  if (o.transports !== undefined) {
    if (!Array.isArray(o.transports) || o.transports.length === 0) {
      throw new TypeError('watchPayment: transports must be a non-empty array');
    }
    for (const t of o.transports) {
      if (!TRANSPORTS.includes(t)) throw new TypeError(`watchPayment: unknown transport ${String(t)}`);
    }
    transports = [...new Set(o.transports)];
  }

  const initialMs = positiveNumber(o.backoff && o.backoff.initialMs, DEFAULT_INITIAL_MS, 'backoff.initialMs');
  const maxMs = positiveNumber(o.backoff && o.backoff.maxMs, Math.max(DEFAULT_MAX_MS, initialMs), 'backoff.maxMs');
  if (maxMs < initialMs) throw new TypeError('watchPayment: backoff.maxMs must be >= backoff.initialMs');

  const pollIntervalMs = Math.min(
    positiveNumber(o.pollIntervalMs, DEFAULT_POLL_INTERVAL_MS, 'pollIntervalMs'),
    MAX_POLL_INTERVAL_MS,
  );
  const failuresBeforeFallback = Math.floor(
    positiveNumber(o.failuresBeforeFallback, DEFAULT_FAILURES_BEFORE_FALLBACK, 'failuresBeforeFallback'),
  );

  let correction = null;
  if (o.watchCorrection) {
    const c = typeof o.watchCorrection === 'object' ? o.watchCorrection : {};
    const windowMs = positiveNumber(c.windowMs, DEFAULT_CORRECTION_WINDOW_MS, 'watchCorrection.windowMs');
    const intervalMs = Math.min(
      positiveNumber(c.intervalMs, DEFAULT_CORRECTION_INTERVAL_MS, 'watchCorrection.intervalMs'),
      MAX_POLL_INTERVAL_MS,
    );
    correction = { polls: Math.max(1, Math.ceil(windowMs / intervalMs)), intervalMs };
  }

  if (o.signal !== undefined && o.signal !== null && typeof o.signal.addEventListener !== 'function') {
    throw new TypeError('watchPayment: signal must be an AbortSignal');
  }

  const pick = (given, globalName) => (given !== undefined ? given : globalThis[globalName]);
  const fetchImpl = pick(o.fetchImpl, 'fetch');
  return {
    baseUrl: typeof o.baseUrl === 'string' ? o.baseUrl : '',
    id: o.checkoutRequestId,
    token: o.token,
    onUpdate: o.onUpdate,
    onFinal: o.onFinal,
    onError: optionalFunction(o.onError, 'onError'),
    onTransport: optionalFunction(o.onTransport, 'onTransport'),
    onCorrection: optionalFunction(o.onCorrection, 'onCorrection'),
    signal: o.signal || null,
    transports,
    initialMs,
    maxMs,
    pollIntervalMs,
    failuresBeforeFallback,
    correction,
    WebSocketImpl: pick(o.WebSocketImpl, 'WebSocket'),
    EventSourceImpl: pick(o.EventSourceImpl, 'EventSource'),
    // Browsers' fetch must be called with `this` unset or the window.
    fetchImpl: typeof fetchImpl === 'function' ? (...a) => fetchImpl(...a) : undefined,
    AbortControllerImpl: globalThis.AbortController,
    random: optionalFunction(o.random, 'random') || Math.random,
    setTimeout: optionalFunction(o.setTimeout, 'setTimeout') || ((f, ms) => globalThis.setTimeout(f, ms)),
    clearTimeout: optionalFunction(o.clearTimeout, 'clearTimeout') || ((t) => globalThis.clearTimeout(t)),
  };
}

/**
 * An exception thrown by a user callback must not break the watcher: it is reported the way
 * the browser reports an uncaught error (`reportError`, or rethrown from a microtask).
 */
function reportLater(err) {
  if (typeof globalThis.reportError === 'function') {
    globalThis.reportError(err);
    return;
  }
  queueMicrotask(() => {
    throw err;
  });
}

/**
 * @typedef {object} PaymentState  The STATE object (docs/api.md, "The STATE object").
 * @property {string} checkoutRequestId
 * @property {string} merchantRequestId
 * @property {'PENDING'|'SUCCESS'|'FAILED'} status
 * @property {string|null} reason
 * @property {number|string|null} resultCode
 * @property {string|null} resultDesc
 * @property {string|null} mpesaReceiptNumber
 * @property {number|null} amount
 * @property {string|null} phoneNumber
 * @property {string|null} transactionDate
 * @property {string} timestamp
 * @property {string|null} completedAt
 * @property {string|null} resultSource
 * @property {number} version  1 pending, 2 final, 3 correction
 */

/**
 * Follows one payment until it is final and reports its states.
 *
 * Callbacks, in order for any one state: `onUpdate(state)` for every state newer (higher
 * `version`) than the one held, then, for the first final state, `onFinal(state)`, exactly
 * once per watcher. With `watchCorrection`, a version-3 correction of an `UNCONFIRMED`
 * final is reported with `onUpdate(state)` then `onCorrection(state, previousFinal)`;
 * `onFinal` is never called a second time. `onError(PaymentError)` is called once when the
 * watcher stops on a permanent error. Nothing is called after the watcher stopped.
 *
 * @param {object} options
 * @param {string} [options.baseUrl] gateway URL, e.g. `https://pay.example.com`; empty or
 *   relative resolves against the page (`location.href`)
 * @param {string} options.checkoutRequestId the payment's CheckoutRequestID
 * @param {string} options.token subscribe token from `POST /v1/stk/push`
 * @param {(state: PaymentState) => void} options.onUpdate every newer state
 * @param {(state: PaymentState) => void} options.onFinal the first final state, once
 * @param {(error: PaymentError) => void} [options.onError] permanent failure; the watcher stopped
 * @param {(transport: 'websocket'|'sse'|'polling') => void} [options.onTransport] the
 *   transport now in use (at start and after each fallback)
 * @param {(state: PaymentState, previous: PaymentState) => void} [options.onCorrection]
 *   a version-3 correction after the final state (needs `watchCorrection`)
 * @param {AbortSignal} [options.signal] stops the watcher when aborted
 * @param {Array<'websocket'|'sse'|'polling'>} [options.transports] allowed transports in
 *   order of preference (default all three)
 * @param {{initialMs?: number, maxMs?: number}} [options.backoff] reconnect backoff,
 *   default 500 ms doubling up to 10000 ms, full jitter
 * @param {number} [options.pollIntervalMs] polling interval while polls succeed
 *   (default 3000, at most 60000)
 * @param {number} [options.failuresBeforeFallback] consecutive failures before the next
 *   transport is tried, or, on the last one, before the status is checked (default 3)
 * @param {boolean|{windowMs?: number, intervalMs?: number}} [options.watchCorrection]
 *   after an `UNCONFIRMED` final, keep polling for a version-3 correction (default off)
 * @param {Function} [options.WebSocketImpl] test hook, default `globalThis.WebSocket`
 * @param {Function} [options.EventSourceImpl] test hook, default `globalThis.EventSource`
 * @param {Function} [options.fetchImpl] test hook, default `globalThis.fetch`
 * @param {() => number} [options.random] test hook, default `Math.random`
 * @param {Function} [options.setTimeout] test hook, default `globalThis.setTimeout`
 * @param {Function} [options.clearTimeout] test hook, default `globalThis.clearTimeout`
 * @returns {{close(): void, readonly state: PaymentState|null,
 *   readonly transport: 'websocket'|'sse'|'polling'|null, done: Promise<PaymentState|null>}}
 *   `done` resolves with the final state, or with `null` when closed or aborted first; it
 *   rejects with the `PaymentError` given to `onError`.
 */
export function watchPayment(options) {
  const o = normalizeOptions(options);
  const urls = endpoints(o.baseUrl, o.id, o.token);

  let held = null; // the state with the highest version applied so far
  let finalState = null; // the state given to onFinal
  let ended = false; // no callback fires once true
  let transportIndex = -1;
  let transportName = null;
  let attempt = 0; // backoff exponent: retries since the last message
  let failStreak = 0; // connections in a row that delivered no message
  let preOpenStreak = 0; // connections in a row that failed before opening
  let everOpened = false; // the current transport has opened at least once
  let generation = 0; // bumped on every teardown; events of older connections are dropped
  let timer = null; // the one pending timer, if any
  let closeConnection = null; // closes the current WebSocket / EventSource
  let inflight = null; // AbortController of the current GET

  /** @type {(state: PaymentState|null) => void} */
  let resolveDone = () => {};
  /** @type {(error: PaymentError) => void} */
  let rejectDone = () => {};
  const done = new Promise((resolve, reject) => {
    resolveDone = resolve;
    rejectDone = reject;
  });
  done.catch(() => {}); // a rejection nobody awaits is not an unhandled rejection

  function call(fn, ...args) {
    if (ended || !fn) return;
    try {
      fn(...args);
    } catch (err) {
      reportLater(err);
    }
  }

  function setTimer(fn, ms) {
    clearTimer();
    timer = o.setTimeout(() => {
      timer = null;
      if (!ended) fn();
    }, ms);
  }

  function clearTimer() {
    if (timer !== null) {
      o.clearTimeout(timer);
      timer = null;
    }
  }

  /** Closes the connection, cancels the GET and the timer; later events are ignored. */
  function teardown() {
    generation++;
    clearTimer();
    if (closeConnection) {
      const c = closeConnection;
      closeConnection = null;
      c();
    }
    if (inflight) {
      const a = inflight;
      inflight = null;
      try {
        a.abort();
      } catch {
        /* nothing to do */
      }
    }
  }

  function stop() {
    if (ended) return;
    teardown();
    ended = true;
    if (o.signal) o.signal.removeEventListener('abort', onAbort);
    resolveDone(finalState);
  }

  function fail(error) {
    if (ended) return;
    teardown();
    const onError = o.onError;
    ended = true;
    if (o.signal) o.signal.removeEventListener('abort', onAbort);
    rejectDone(error);
    if (onError) {
      try {
        onError(error);
      } catch (err) {
        reportLater(err);
      }
    }
  }

  function onAbort() {
    stop();
  }

  /** Applies a state if it is newer than the one held. */
  function offer(state) {
    if (ended || !isState(state)) return;
    if (held && state.version <= held.version) return;
    const previousFinal = finalState;
    held = state;
    if (previousFinal) {
      // Only reachable while watching for a correction.
      teardown();
      call(o.onUpdate, state);
      call(o.onCorrection, state, previousFinal);
      stop();
      return;
    }
    if (!isFinal(state)) {
      call(o.onUpdate, state);
      return;
    }
    finalState = state;
    teardown();
    resolveDone(state);
    call(o.onUpdate, state);
    call(o.onFinal, state);
    if (ended) return;
    if (o.correction && state.reason === 'UNCONFIRMED' && state.version < 3 && o.fetchImpl) {
      watchCorrection(o.correction.polls);
    } else {
      stop();
    }
  }

  /** Handles one WebSocket / SSE message; true when it was a valid message. */
  function onMessage(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return false;
    }
    if (
      !msg ||
      (msg.type !== 'PAYMENT_UPDATE' && msg.type !== 'PAYMENT_COMPLETED') ||
      !isState(msg.data)
    ) {
      return false;
    }
    attempt = 0;
    failStreak = 0;
    preOpenStreak = 0;
    offer(msg.data);
    return true;
  }

  function supported(name) {
    if (name === 'websocket') return typeof o.WebSocketImpl === 'function';
    if (name === 'sse') return typeof o.EventSourceImpl === 'function';
    return typeof o.fetchImpl === 'function';
  }

  function hasFallback() {
    for (let i = transportIndex + 1; i < o.transports.length; i++) {
      if (supported(o.transports[i])) return true;
    }
    return false;
  }

  function nextTransport() {
    teardown();
    while (++transportIndex < o.transports.length) {
      const name = o.transports[transportIndex];
      if (!supported(name)) continue;
      transportName = name;
      attempt = 0;
      failStreak = 0;
      preOpenStreak = 0;
      everOpened = false;
      call(o.onTransport, name);
      if (!ended) connect();
      return;
    }
    fail(new PaymentError('NO_TRANSPORT', 'none of the allowed transports is available here'));
  }

  function connect() {
    teardown();
    const gen = generation;
    if (transportName === 'websocket') connectWebSocket(gen);
    else if (transportName === 'sse') connectEventSource(gen);
    else pollOnce(gen);
  }

  function scheduleReconnect() {
    const delay = backoffDelay(attempt, o.initialMs, o.maxMs, o.random);
    attempt = Math.min(attempt + 1, 30);
    setTimer(connect, delay);
  }

  /**
   * A WebSocket or EventSource connection ended without a final state. Decides between
   * reconnecting, checking the status with one GET, and falling back.
   *
   * Falling back is for a transport that cannot work here (no upgrade through a proxy, an
   * EventSource blocked): once it has opened in this watcher, later failures to open are an
   * outage of the gateway, and it is retried (with a status check every few failures).
   */
  function connectionEnded(opened, delivered) {
    if (ended || finalState) return;
    if (!delivered) failStreak++;
    if (opened) everOpened = true;
    preOpenStreak = opened ? 0 : preOpenStreak + 1;
    if (!everOpened && preOpenStreak >= o.failuresBeforeFallback && hasFallback()) {
      checkStatus(nextTransport);
    } else if (failStreak > 0 && failStreak % o.failuresBeforeFallback === 0) {
      checkStatus(scheduleReconnect);
    } else {
      scheduleReconnect();
    }
  }

  /** The environment refused to create the connection at all (e.g. a CSP rule). */
  function cannotConnect() {
    if (hasFallback()) checkStatus(nextTransport);
    else fail(new PaymentError('NO_TRANSPORT', `cannot open a ${transportName} connection here`));
  }

  function connectWebSocket(gen) {
    let ws;
    try {
      ws = new o.WebSocketImpl(urls.websocket);
    } catch {
      cannotConnect();
      return;
    }
    let opened = false;
    let delivered = false;
    const live = () => gen === generation && !ended;
    const detach = () => {
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      try {
        ws.close(1000);
      } catch {
        /* already closed */
      }
    };
    const finished = () => {
      if (!live()) return;
      closeConnection = null;
      detach();
      connectionEnded(opened, delivered);
    };
    ws.onopen = () => {
      if (live()) opened = true;
    };
    ws.onmessage = (ev) => {
      if (live() && typeof ev.data === 'string' && onMessage(ev.data)) delivered = true;
    };
    // Browsers follow an error with a close event; some implementations (older undici)
    // do not after a failed handshake, so an error before `open` ends the attempt here.
    ws.onerror = () => {
      if (!opened) finished();
    };
    ws.onclose = finished;
    closeConnection = detach;
  }

  function connectEventSource(gen) {
    let es;
    try {
      es = new o.EventSourceImpl(urls.sse);
    } catch {
      cannotConnect();
      return;
    }
    let opened = false;
    let delivered = false;
    const live = () => gen === generation && !ended;
    const handler = (ev) => {
      if (live() && onMessage(ev.data)) delivered = true;
    };
    es.onopen = () => {
      if (live()) opened = true;
    };
    es.onmessage = handler; // events without a name, in case a proxy strips it
    es.addEventListener('PAYMENT_UPDATE', handler);
    es.addEventListener('PAYMENT_COMPLETED', handler);
    // EventSource would reconnect on its own (and re-deliver the final state, or give up
    // silently on HTTP errors): close it and decide here, like for the WebSocket.
    const detach = () => {
      es.onopen = es.onmessage = es.onerror = null;
      es.removeEventListener('PAYMENT_UPDATE', handler);
      es.removeEventListener('PAYMENT_COMPLETED', handler);
      es.close();
    };
    es.onerror = () => {
      if (!live()) return;
      closeConnection = null;
      detach();
      connectionEnded(opened, delivered);
    };
    closeConnection = detach;
  }

  /**
   * One GET of the payment. Resolves with 'ok' (a state was offered), 'transient'
   * (network error, 429, 5xx, unreadable body), 'stale' (the watcher moved on meanwhile),
   * or a PaymentError for a permanent answer.
   */
  async function getState() {
    const gen = generation;
    const controller = o.AbortControllerImpl ? new o.AbortControllerImpl() : null;
    inflight = controller;
    let response;
    let body = null;
    try {
      response = await o.fetchImpl(urls.get, {
        method: 'GET',
        headers: { Accept: 'application/json' },
        cache: 'no-store',
        credentials: 'omit',
        signal: controller ? controller.signal : undefined,
      });
      body = await response.json().catch(() => null);
    } catch {
      response = null;
    } finally {
      if (inflight === controller) inflight = null;
    }
    if (gen !== generation || ended) return 'stale';
    if (!response) return 'transient';
    const status = response.status;
    if (status === 200) {
      if (!isState(body)) return 'transient';
      offer(body);
      return 'ok';
    }
    if (status === 408 || status === 425 || status === 429 || status >= 500) return 'transient';
    const serverCode = body && body.error && typeof body.error.code === 'string' ? body.error.code : null;
    if (status === 401) return new PaymentError('UNAUTHORIZED', 'subscribe token missing, wrong or expired', { status, serverCode });
    if (status === 404) return new PaymentError('NOT_FOUND', 'no such payment', { status, serverCode });
    if (status === 403) return new PaymentError('FORBIDDEN', 'request refused (403)', { status, serverCode });
    if (status >= 400) return new PaymentError('BAD_REQUEST', `request refused (${status})`, { status, serverCode });
    return 'transient';
  }

  /** One GET to tell a permanent failure from a passing one, then `next()`. */
  function checkStatus(next) {
    teardown();
    if (!o.fetchImpl) {
      next();
      return;
    }
    const gen = generation;
    getState().then((result) => {
      if (gen !== generation || ended || finalState || result === 'stale') return;
      if (result instanceof PaymentError) fail(result);
      else next();
    });
  }

  function pollOnce(gen) {
    getState().then((result) => {
      if (gen !== generation || ended || finalState || result === 'stale') return;
      if (result instanceof PaymentError) {
        fail(result);
      } else if (result === 'ok') {
        attempt = 0;
        setTimer(connect, o.pollIntervalMs);
      } else {
        scheduleReconnect();
      }
    });
  }

  /** After an UNCONFIRMED final: poll at most `remaining` times for a version-3 correction. */
  function watchCorrection(remaining) {
    transportName = 'polling';
    setTimer(() => {
      const gen = generation;
      getState().then((result) => {
        if (gen !== generation || ended || result === 'stale') return;
        if (result instanceof PaymentError || remaining <= 1) stop();
        else watchCorrection(remaining - 1);
      });
    }, o.correction.intervalMs);
  }

  if (o.signal) {
    if (o.signal.aborted) {
      ended = true;
      resolveDone(null);
    } else {
      o.signal.addEventListener('abort', onAbort, { once: true });
    }
  }
  // Start on the next microtask: no callback runs before watchPayment has returned, and a
  // close() right after the call opens nothing.
  queueMicrotask(() => {
    if (!ended) nextTransport();
  });

  return {
    close: stop,
    get state() {
      return held;
    },
    get transport() {
      return ended ? null : transportName;
    },
    done,
  };
}

export default watchPayment;
