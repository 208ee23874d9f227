// Shared test fixtures: STATE objects, a callback recorder, and timer / random recorders.

import { watchPayment } from '../../src/index.js';
import { eventSourceClass, webSocketClass } from './browser-shims.js';
import { startServer } from './fake-server.js';

export const ID = 'ws_CO_21072024125130652700961992';
export const TOKEN = '1721556390.NGcO6fi4W5GCXzQqWeF5mfvD5G7y-Mbm1PZI2jnEW-Q';

const base = {
  checkoutRequestId: ID,
  merchantRequestId: '2654-4b64-97ff-b827b542881d3130',
  reason: null,
  resultCode: null,
  resultDesc: null,
  mpesaReceiptNumber: null,
  amount: 100,
  phoneNumber: '2547******78',
  transactionDate: null,
  timestamp: '2024-07-21T09:51:30.412518271Z',
  completedAt: null,
  resultSource: null,
};

export const pending = () => ({ ...base, status: 'PENDING', version: 1 });

export const success = () => ({
  ...base,
  status: 'SUCCESS',
  resultCode: 0,
  resultDesc: 'The service request is processed successfully.',
  mpesaReceiptNumber: 'NLJ7RT61SV',
  transactionDate: '2024-07-21T12:51:38+03:00',
  timestamp: '2024-07-21T09:51:40.118302557Z',
  completedAt: '2024-07-21T09:51:40.118302557Z',
  resultSource: 'CALLBACK',
  version: 2,
});

export const unconfirmed = () => ({
  ...base,
  status: 'FAILED',
  reason: 'UNCONFIRMED',
  timestamp: '2024-07-21T10:01:30Z',
  completedAt: '2024-07-21T10:01:30Z',
  resultSource: 'RECONCILIATION',
  version: 2,
});

export const correction = () => ({ ...success(), version: 3, timestamp: '2024-07-21T10:03:00Z' });

/** Rejects after `ms`: a guard so that a broken client fails a test instead of hanging it. */
export function within(promise, ms = 5000, what = 'event') {
  let t;
  const guard = new Promise((_, reject) => {
    t = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  return Promise.race([promise, guard]).finally(() => clearTimeout(t));
}

/** A promise with its resolve function. */
export function deferred() {
  let resolve;
  const promise = new Promise((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/**
 * setTimeout / clearTimeout recorders: run real timers, remember every requested delay and
 * which timers are still pending.
 */
export function timerRecorder() {
  const delays = [];
  const pending = new Set();
  let waiters = [];
  return {
    delays,
    pending,
    /** Resolves when the watcher sets its next timer, with the delay. */
    next() {
      const d = deferred();
      waiters.push(d.resolve);
      return d.promise;
    },
    setTimeout(fn, ms) {
      delays.push(ms);
      const w = waiters;
      waiters = [];
      for (const resolve of w) resolve(ms);
      const t = setTimeout(() => {
        pending.delete(t);
        fn();
      }, ms);
      pending.add(t);
      return t;
    },
    clearTimeout(t) {
      pending.delete(t);
      clearTimeout(t);
    },
  };
}

/** A random() that returns the given values in turn (then repeats the last). */
export function sequence(values) {
  let i = 0;
  const used = [];
  const fn = () => {
    const v = values[Math.min(i++, values.length - 1)];
    used.push(v);
    return v;
  };
  fn.used = used;
  return fn;
}

/**
 * Starts a fake server and a watcher wired to it with recording callbacks.
 * `setup(server)` scripts the server before the watcher starts; `options` override
 * the watcher's options; `sync({handle, rec, WS, ES})` runs right after watchPayment()
 * returned, before the watcher has started.
 */
export async function harness(t, setup, options = {}, sync = null) {
  const server = await startServer();
  t.after(() => server.stop());
  setup?.(server);
  const WS = webSocketClass();
  const ES = eventSourceClass();
  const timers = timerRecorder();
  const rec = {
    updates: [],
    finals: [],
    errors: [],
    corrections: [],
    transports: [],
    /** Every callback, in order, as [name, version or code]. */
    log: [],
    final: deferred(),
    error: deferred(),
    correction: deferred(),
    updateWaiters: [],
    /** Resolves once `n` updates were received. */
    waitUpdates(n) {
      if (rec.updates.length >= n) return Promise.resolve();
      const d = deferred();
      rec.updateWaiters.push([n, d.resolve]);
      return within(d.promise, 5000, `update #${n}`);
    },
  };
  const handle = watchPayment({
    baseUrl: server.url,
    checkoutRequestId: ID,
    token: TOKEN,
    backoff: { initialMs: 5, maxMs: 40 },
    pollIntervalMs: 10,
    WebSocketImpl: WS,
    EventSourceImpl: ES,
    fetchImpl: fetch,
    setTimeout: timers.setTimeout,
    clearTimeout: timers.clearTimeout,
    onUpdate: (s) => {
      rec.updates.push(s);
      rec.log.push(['update', s.version]);
      rec.updateWaiters = rec.updateWaiters.filter(([n, resolve]) => {
        if (rec.updates.length < n) return true;
        resolve();
        return false;
      });
    },
    onFinal: (s) => {
      rec.finals.push(s);
      rec.log.push(['final', s.version]);
      rec.final.resolve(s);
    },
    onError: (e) => {
      rec.errors.push(e);
      rec.log.push(['error', e.code]);
      rec.error.resolve(e);
    },
    onCorrection: (s, prev) => {
      rec.corrections.push([s, prev]);
      rec.log.push(['correction', s.version]);
      rec.correction.resolve(s);
    },
    onTransport: (name) => {
      rec.transports.push(name);
      rec.log.push(['transport', name]);
    },
    ...options,
  });
  // Runs before the watcher starts (it starts on the next microtask).
  sync?.({ handle, rec, WS, ES });
  t.after(() => handle.close());
  return { server, handle, rec, timers, WS, ES };
}

/** True when no WebSocket or EventSource created by the watcher is still open. */
export function allClosed(WS, ES) {
  return (
    WS.instances.every((w) => w.readyState === 3 || w.readyState === 2) &&
    ES.instances.every((e) => e.readyState === 2)
  );
}

/**
 * Resolves once `cond()` is true, checking after each turn of the event loop; rejects after
 * `ms`. Used only for conditions no event reports (e.g. "the watcher has stopped").
 */
export async function until(cond, ms = 5000, what = 'condition') {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setImmediate(r));
  }
}

/** Waits for the end of a server-side connection (WebSocket or SSE). */
export function gone(conn) {
  if (conn.ended) return Promise.resolve();
  return within(new Promise((r) => conn.once('gone', r)), 5000, 'server-side close');
}
