// Stopping: permanent errors, AbortSignal, close(). After a stop nothing fires and nothing
// connects.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PaymentError } from '../src/index.js';
import { allClosed, deferred, gone, harness, pending, success, TOKEN, within } from './helpers/util.js';

/**
 * After the watcher stopped: no timer of the watcher is pending, every connection it made is
 * closed, and, over a window several times the backoff cap (40 ms in the harness), the
 * server sees no new request. The window is a negative check, not a synchronisation.
 */
async function assertQuiet(server, timers, WS, ES) {
  assert.equal(timers.pending.size, 0, 'no timer pending');
  assert.ok(allClosed(WS, ES), 'every WebSocket and EventSource closed');
  const before = { ...server.counts };
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(server.counts, before, 'no request after the stop');
}

test('401 on every route: one GET tells UNAUTHORIZED, onError once, then nothing', async (t) => {
  const { server, handle, rec, timers, WS, ES } = await harness(t, (s) => {
    s.ws = (conn) => conn.reject(401);
    s.sse = (conn) => conn.reject(401);
    s.get = (conn) => conn.reject(401);
  });
  await assert.rejects(within(handle.done), (err) => {
    assert.ok(err instanceof PaymentError);
    assert.equal(err.code, 'UNAUTHORIZED');
    assert.equal(err.status, 401);
    assert.equal(err.serverCode, 'UNAUTHORIZED');
    return true;
  });
  assert.deepEqual(rec.log, [
    ['transport', 'websocket'],
    ['error', 'UNAUTHORIZED'],
  ]);
  assert.deepEqual(server.counts, { ws: 3, get: 1, sse: 0 });
  assert.equal(handle.transport, null);
  await assertQuiet(server, timers, WS, ES);
  assert.equal(rec.errors.length, 1);
});

test('404 unknown payment: NOT_FOUND with the server code; polling alone stops after one GET', async (t) => {
  const { server, handle, rec, timers, WS, ES } = await harness(
    t,
    (s) => {
      s.get = (conn) => conn.reject(404);
    },
    { transports: ['polling'] },
  );
  const err = await within(rec.error.promise);
  assert.equal(err.code, 'NOT_FOUND');
  assert.equal(err.status, 404);
  assert.equal(err.serverCode, 'PAYMENT_NOT_FOUND');
  await assert.rejects(handle.done);
  assert.equal(server.counts.get, 1);
  await assertQuiet(server, timers, WS, ES);
});

test('token expires while reconnecting: the GET after repeated failures stops it', async (t) => {
  const { server, rec, timers, WS, ES } = await harness(t, (s) => {
    s.ws = (conn, n) => {
      if (n === 1) {
        const ws = conn.accept();
        ws.send(pending());
        ws.close(1001);
      } else {
        conn.reject(401);
      }
    };
    s.get = (conn) => conn.reject(401);
  });
  const err = await within(rec.error.promise);
  assert.equal(err.code, 'UNAUTHORIZED');
  assert.deepEqual(server.counts, { ws: 4, get: 1, sse: 0 });
  assert.equal(rec.finals.length, 0);
  await assertQuiet(server, timers, WS, ES);
});

test('no transport available at all: NO_TRANSPORT, asynchronously', async (t) => {
  let errorsAtReturn = -1;
  const { handle, rec } = await harness(
    t,
    null,
    { WebSocketImpl: null, EventSourceImpl: null, fetchImpl: null },
    ({ rec }) => {
      errorsAtReturn = rec.errors.length;
    },
  );
  assert.equal(errorsAtReturn, 0, 'nothing fires before watchPayment returned');
  const err = await within(rec.error.promise);
  assert.equal(err.code, 'NO_TRANSPORT');
  await assert.rejects(handle.done, PaymentError);
});

test('abort through the signal while connected: connection closed, no callback after', async (t) => {
  const controller = new AbortController();
  let serverSide;
  const connected = deferred();
  const { server, handle, rec, timers, WS, ES } = await harness(
    t,
    (s) => {
      s.ws = (conn) => {
        serverSide = conn.accept();
        serverSide.send(pending());
        connected.resolve();
      };
    },
    { signal: controller.signal },
  );
  await within(connected.promise);
  await rec.waitUpdates(1);
  controller.abort();
  assert.equal(await handle.done, null, 'done resolves with null when aborted before final');
  await gone(serverSide); // the client closed its WebSocket
  serverSide.send(success()); // too late: nobody listens
  assert.deepEqual(rec.log, [
    ['transport', 'websocket'],
    ['update', 1],
  ]);
  assert.equal(server.counts.ws, 1);
  await assertQuiet(server, timers, WS, ES);
  assert.equal(rec.finals.length, 0);
});

test('abort while waiting to reconnect: the timer is cleared, no new connection', async (t) => {
  const controller = new AbortController();
  const { server, handle, rec, timers, WS, ES } = await harness(
    t,
    (s) => {
      s.ws = (conn) => {
        const ws = conn.accept();
        ws.send(pending());
        ws.destroy();
      };
    },
    { signal: controller.signal, backoff: { initialMs: 30, maxMs: 30 }, random: () => 0.99 },
  );
  const delay = await within(timers.next(), 5000, 'reconnect timer');
  assert.equal(delay, 29);
  assert.equal(timers.pending.size, 1);
  controller.abort();
  assert.equal(timers.pending.size, 0);
  assert.equal(await handle.done, null);
  await assertQuiet(server, timers, WS, ES);
  assert.equal(server.counts.ws, 1);
  assert.equal(rec.finals.length, 0);
});

test('signal already aborted: nothing is opened', async (t) => {
  const { server, handle, rec, WS } = await harness(t, null, { signal: AbortSignal.abort() });
  assert.equal(await handle.done, null);
  assert.equal(WS.instances.length, 0);
  assert.equal(server.total(), 0);
  assert.deepEqual(rec.log, []);
});

test('close() during a GET: the request is aborted, no callback after', async (t) => {
  const held = deferred();
  let request;
  const { server, handle, rec, timers, WS, ES } = await harness(
    t,
    (s) => {
      s.get = (conn) => {
        request = conn.req; // never answered
        held.resolve();
      };
    },
    { transports: ['polling'] },
  );
  await within(held.promise);
  const aborted = new Promise((r) => request.socket.once('close', r));
  handle.close();
  await within(aborted, 5000, 'GET aborted');
  assert.deepEqual(rec.log, [['transport', 'polling']]);
  await assertQuiet(server, timers, WS, ES);
});

test('close() right after watchPayment(): nothing is opened', async (t) => {
  const { server, handle, rec, WS } = await harness(t, null, {}, ({ handle }) => {
    handle.close();
    handle.close(); // idempotent
  });
  assert.equal(await handle.done, null);
  await new Promise((r) => setImmediate(r));
  assert.equal(WS.instances.length, 0);
  assert.equal(server.total(), 0);
  assert.deepEqual(rec.log, []);
});

test('close() inside onUpdate of the final state: onFinal is not called', async (t) => {
  let handleRef;
  const finals = [];
  const { handle } = await harness(
    t,
    (s) => {
      s.ws = (conn) => {
        const ws = conn.accept();
        ws.send(success());
        ws.close(1000);
      };
    },
    {
      onUpdate: () => handleRef.close(),
      onFinal: (s) => finals.push(s),
    },
  );
  handleRef = handle;
  const result = await within(handle.done);
  assert.equal(result.status, 'SUCCESS', 'done still carries the final state');
  await new Promise((r) => setImmediate(r));
  assert.equal(finals.length, 0);
});

test('an exception in a callback does not stop the watcher', async (t) => {
  // The client hands callback exceptions to reportError (as browsers define it).
  const reported = [];
  const saved = globalThis.reportError;
  globalThis.reportError = (err) => reported.push(err);
  t.after(() => {
    globalThis.reportError = saved;
  });
  const finals = [];
  const { handle } = await harness(
    t,
    (s) => {
      s.ws = (conn) => {
        const ws = conn.accept();
        ws.send(pending());
        ws.send(success());
        ws.close(1000);
      };
    },
    {
      onUpdate: () => {
        throw new Error('page bug');
      },
      onFinal: (s) => finals.push(s),
    },
  );
  await within(handle.done);
  assert.equal(reported.length, 2, 'both onUpdate exceptions reported');
  assert.equal(finals.length, 1);
  assert.equal(reported[0].message, 'page bug');
});

test('the token is never logged, and not in error messages', async (t) => {
  const calls = [];
  const saved = {};
  for (const m of ['log', 'info', 'warn', 'error', 'debug']) {
    saved[m] = console[m];
    console[m] = (...args) => calls.push(args);
  }
  t.after(() => Object.assign(console, saved));
  const { rec } = await harness(t, (s) => {
    s.ws = (conn) => conn.reject(401);
    s.get = (conn) => conn.reject(401);
  });
  const err = await within(rec.error.promise);
  Object.assign(console, saved);
  assert.deepEqual(calls, []);
  for (const text of [err.message, err.stack, JSON.stringify(err)]) {
    assert.ok(!text.includes(TOKEN), 'token in error');
    assert.ok(!text.includes(encodeURIComponent(TOKEN)), 'token in error');
  }
});
