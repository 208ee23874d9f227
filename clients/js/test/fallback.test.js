// Falling back from WebSocket to SSE to polling, and the SSE and polling transports alone.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { NodeWebSocket } from './helpers/browser-shims.js';
import { gone, harness, ID, pending, success, TOKEN, within } from './helpers/util.js';

for (const [label, refuse] of [
  ['HTTP 503 on the upgrade', (conn) => conn.reject(503)],
  ['HTTP 400 (a proxy that drops the Upgrade header)', (conn) => conn.reject(400)],
  ['connection dropped before the upgrade answer', (conn) => conn.destroy()],
]) {
  test(`WebSocket refused repeatedly (${label}): one GET, then SSE, final once`, async (t) => {
    const { server, handle, rec } = await harness(t, (s) => {
      s.ws = refuse;
      s.get = (conn) => conn.json(pending());
      s.sse = (conn) => {
        const stream = conn.accept();
        stream.send(pending());
        stream.comment('ping');
        stream.send(success());
        stream.end();
      };
    });
    const final = await within(handle.done);
    assert.equal(final.status, 'SUCCESS');
    assert.deepEqual(rec.log, [
      ['transport', 'websocket'],
      ['update', 1], // from the GET made before falling back
      ['transport', 'sse'],
      ['update', 2],
      ['final', 2],
    ]);
    assert.deepEqual(server.counts, { ws: 3, get: 1, sse: 1 });
    assert.ok(server.requests.includes(`/v1/payments/${ID}/events?token=${encodeURIComponent(TOKEN)}`));
  });
}

test('a WebSocket that reports a failed handshake with error only (no close event) still falls back', async (t) => {
  // Node 20's undici WebSocket fires `error` and never `close` after a non-101 answer.
  class ErrorOnly extends NodeWebSocket {
    _fail() {
      if (this.readyState === 3) return;
      this._req.destroy();
      this._emit('error');
    }
  }
  const { server, handle, rec } = await harness(
    t,
    (s) => {
      s.ws = (conn) => conn.reject(503);
      s.get = (conn) => conn.json(pending());
      s.sse = (conn) => {
        const stream = conn.accept();
        stream.send(success());
        stream.end();
      };
    },
    { WebSocketImpl: ErrorOnly },
  );
  await within(handle.done);
  assert.deepEqual(rec.transports, ['websocket', 'sse']);
  assert.deepEqual(server.counts, { ws: 3, get: 1, sse: 1 });
});

test('WebSocket that worked, then refused during an outage: no fallback, status checked, recovers', async (t) => {
  const { server, handle, rec } = await harness(t, (s) => {
    s.ws = (conn, n) => {
      if (n === 1) {
        const ws = conn.accept();
        ws.send(pending());
        ws.close(1001); // node draining
      } else if (n < 8) {
        conn.reject(503); // every node busy for a while
      } else {
        const ws = conn.accept();
        ws.send(success());
        ws.close(1000);
      }
    };
    s.get = (conn) => conn.reject(503);
  });
  await within(handle.done);
  assert.deepEqual(rec.transports, ['websocket'], 'upgrades work here: an outage is no reason to fall back');
  assert.deepEqual(server.counts, { ws: 8, get: 2, sse: 0 });
  assert.equal(rec.finals.length, 1);
});

test('no WebSocket in the environment: SSE straight away', async (t) => {
  const { server, handle, rec } = await harness(
    t,
    (s) => {
      s.sse = (conn) => {
        const stream = conn.accept();
        stream.send(success());
        stream.end();
      };
    },
    { WebSocketImpl: null },
  );
  await within(handle.done);
  assert.deepEqual(rec.transports, ['sse']);
  assert.deepEqual(server.counts, { ws: 0, get: 0, sse: 1 });
});

test('WebSocket constructor throws (e.g. a CSP rule): falls back after one GET', async (t) => {
  class Throwing {
    constructor() {
      throw new Error('refused by policy');
    }
  }
  const { server, handle, rec } = await harness(
    t,
    (s) => {
      s.get = (conn) => conn.json(pending());
      s.sse = (conn) => {
        const stream = conn.accept();
        stream.send(success());
        stream.end();
      };
    },
    { WebSocketImpl: Throwing },
  );
  await within(handle.done);
  assert.deepEqual(rec.transports, ['websocket', 'sse']);
  assert.deepEqual(server.counts, { ws: 0, get: 1, sse: 1 });
});

test('SSE refused too: polling with GET until final', async (t) => {
  const { server, handle, rec, timers } = await harness(t, (s) => {
    s.ws = (conn) => conn.reject(503);
    s.sse = (conn) => conn.reject(503);
    // GET 1: before leaving WebSocket; GET 2: before leaving SSE; then the polls.
    s.get = (conn, n) => (n < 5 ? conn.json(pending()) : conn.json(success()));
  });
  const final = await within(handle.done);
  assert.equal(final.status, 'SUCCESS');
  assert.deepEqual(rec.transports, ['websocket', 'sse', 'polling']);
  assert.deepEqual(server.counts, { ws: 3, sse: 3, get: 5 });
  assert.deepEqual(
    rec.updates.map((s) => s.version),
    [1, 2],
  );
  assert.equal(rec.finals.length, 1);
  // The two successful polls were followed by the poll interval (10 ms in the harness).
  assert.deepEqual(timers.delays.slice(-2), [10, 10]);
  assert.equal(timers.pending.size, 0);
});

test('SSE alone: stream ends without a final state (node shutdown), reconnects, final once', async (t) => {
  let first;
  const { server, handle, rec, ES } = await harness(
    t,
    (s) => {
      s.sse = (conn, n) => {
        const stream = conn.accept();
        stream.send(pending());
        if (n === 1) first.then(() => stream.end());
        else {
          stream.send(success());
          stream.send(success());
          stream.end();
        }
      };
    },
    { transports: ['sse'] },
  );
  first = rec.waitUpdates(1);
  await within(handle.done);
  assert.deepEqual(server.counts, { ws: 0, get: 0, sse: 2 });
  for (const es of ES.instances) {
    assert.equal(es.readyState, 2, 'the client closed each EventSource itself');
    assert.equal(es.listenerCount('PAYMENT_UPDATE'), 0);
  }
  assert.deepEqual(rec.log, [
    ['transport', 'sse'],
    ['update', 1],
    ['update', 2],
    ['final', 2],
  ]);
});

test('SSE: the EventSource is closed by the client after the final event', async (t) => {
  let stream;
  const { handle, ES } = await harness(
    t,
    (s) => {
      s.sse = (conn) => {
        stream = conn.accept();
        stream.send(success()); // the stream is left open by the server
      };
    },
    { transports: ['sse'] },
  );
  await within(handle.done);
  await gone(stream);
  assert.equal(ES.instances.length, 1);
  assert.equal(ES.instances[0].readyState, 2);
  assert.equal(ES.instances[0].listenerCount('PAYMENT_COMPLETED'), 0);
});

test('polling alone: transient errors (503, 429, network) back off, success completes', async (t) => {
  const { server, handle, rec, timers } = await harness(
    t,
    (s) => {
      s.get = (conn, n) => {
        if (n === 1) conn.reject(503);
        else if (n === 2) conn.reject(429);
        else if (n === 3) conn.destroy();
        else if (n === 4) conn.json({ not: 'a state' });
        else if (n === 5) conn.json(pending());
        else conn.json(success());
      };
    },
    { transports: ['polling'], random: () => 0.5 },
  );
  await within(handle.done);
  assert.equal(server.counts.get, 6);
  assert.deepEqual(rec.log, [
    ['transport', 'polling'],
    ['update', 1],
    ['update', 2],
    ['final', 2],
  ]);
  // backoff 5 ms doubling to 40 ms, random 0.5: 2, 5, 10, 20; then the poll interval.
  assert.deepEqual(timers.delays, [2, 5, 10, 20, 10]);
});
