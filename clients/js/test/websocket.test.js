// The WebSocket transport: snapshots, versions, exactly-once onFinal, reconnection.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { gone, harness, ID, pending, success, TOKEN, unconfirmed, within } from './helpers/util.js';

test('snapshot then final: onUpdate for each state, onFinal once, then everything stops', async (t) => {
  let serverSide;
  const { server, handle, rec, timers, WS } = await harness(t, (s) => {
    s.ws = (conn) => {
      serverSide = conn.accept();
      serverSide.send(pending());
      serverSide.send(success());
      serverSide.close(1000, 'payment completed');
    };
  });
  const final = await within(handle.done, 5000, 'done');
  assert.equal(final.status, 'SUCCESS');
  assert.equal(final.mpesaReceiptNumber, 'NLJ7RT61SV');
  assert.deepEqual(rec.log, [
    ['transport', 'websocket'],
    ['update', 1],
    ['update', 2],
    ['final', 2],
  ]);
  assert.equal(rec.finals[0], final);
  assert.equal(handle.state, final);
  assert.equal(handle.transport, null);
  await gone(serverSide);
  assert.equal(server.counts.ws, 1);
  assert.equal(server.counts.get, 0);
  assert.equal(timers.pending.size, 0, 'no timer left');
  assert.equal(WS.instances.length, 1);
  // The token travels URL-encoded in the query string, and only there.
  assert.equal(server.requests[0], `/v1/payments/${ID}/ws?token=${encodeURIComponent(TOKEN)}`);
});

test('a payment already final: the first message completes it', async (t) => {
  const { server, handle, rec } = await harness(t, (s) => {
    s.ws = (conn) => {
      const ws = conn.accept();
      ws.send(unconfirmed());
      ws.close(1000);
    };
  });
  const final = await within(handle.done);
  assert.equal(final.reason, 'UNCONFIRMED');
  assert.deepEqual(rec.log.slice(1), [
    ['update', 2],
    ['final', 2],
  ]);
  assert.equal(server.counts.ws, 1);
});

test('connection destroyed mid-payment: reconnects, takes the snapshot again, final once', async (t) => {
  let firstUpdate;
  const { server, handle, rec } = await harness(t, (s) => {
    s.ws = (conn, n) => {
      const ws = conn.accept();
      ws.send(pending());
      if (n === 1) {
        // Drop without a close frame once the client has seen the snapshot.
        firstUpdate.then(() => ws.destroy());
      } else {
        ws.send(success());
        ws.close(1000);
      }
    };
  });
  firstUpdate = rec.waitUpdates(1);
  await within(handle.done);
  assert.equal(server.counts.ws, 2);
  assert.deepEqual(
    rec.updates.map((s) => s.version),
    [1, 2],
    'the pending snapshot of the second connection is not applied again',
  );
  assert.equal(rec.finals.length, 1);
});

test('replayed and older frames are applied once', async (t) => {
  const { server, handle, rec } = await harness(t, (s) => {
    s.ws = (conn, n) => {
      const ws = conn.accept();
      if (n === 1) {
        ws.send(pending());
        ws.send(pending());
        ws.send(pending());
        ws.sendRaw('not json');
        ws.sendRaw(JSON.stringify({ type: 'PAYMENT_UPDATE', data: { version: 'x' } }));
        ws.sendRaw(JSON.stringify({ type: 'SOMETHING_ELSE', data: success() }));
        ws.send(pending());
        ws.close(1001, 'going away');
      } else {
        ws.send(pending());
        ws.send(success());
        ws.send(success());
        ws.send(pending());
        ws.close(1000);
      }
    };
  });
  await within(handle.done);
  assert.deepEqual(rec.log, [
    ['transport', 'websocket'],
    ['update', 1],
    ['update', 2],
    ['final', 2],
  ]);
  assert.equal(server.counts.ws, 2);
});

test('final delivered, connection dropped before close 1000: onFinal once, no reconnect', async (t) => {
  let serverSide;
  const { server, handle, rec, timers } = await harness(t, (s) => {
    s.ws = (conn) => {
      serverSide = conn.accept();
      serverSide.send(pending());
      serverSide.send(success());
      serverSide.destroy();
    };
  });
  await within(handle.done);
  await gone(serverSide);
  assert.equal(rec.finals.length, 1);
  assert.equal(timers.pending.size, 0);
  assert.equal(server.counts.ws, 1);
});

test('gateway restart (close 1001 then new node): reconnects at once-ish and completes', async (t) => {
  const { server, handle, rec, timers } = await harness(
    t,
    (s) => {
      s.ws = (conn, n) => {
        const ws = conn.accept();
        if (n === 1) {
          ws.send(pending());
          ws.close(1001, 'server shutting down');
        } else {
          // The restarted node's snapshot is the final state.
          ws.send(success());
          ws.close(1000);
        }
      };
    },
    { backoff: { initialMs: 20, maxMs: 1000 } },
  );
  await within(handle.done);
  assert.equal(server.counts.ws, 2);
  assert.deepEqual(rec.log.slice(1), [
    ['update', 1],
    ['update', 2],
    ['final', 2],
  ]);
  assert.equal(timers.delays.length, 1);
  assert.ok(timers.delays[0] >= 0 && timers.delays[0] < 20, `delay ${timers.delays[0]} within the first step`);
});

test('connections that open but never deliver: status checked with one GET every few failures', async (t) => {
  const { server, handle, rec } = await harness(t, (s) => {
    s.ws = (conn, n) => {
      const ws = conn.accept();
      if (n <= 6) {
        ws.destroy();
      } else {
        ws.send(success());
        ws.close(1000);
      }
    };
    s.get = (conn) => conn.json(pending());
  });
  await within(handle.done);
  assert.equal(server.counts.ws, 7);
  assert.equal(server.counts.get, 2, 'one GET after the 3rd and one after the 6th failure');
  assert.deepEqual(rec.transports, ['websocket'], 'an opening WebSocket is not abandoned');
  assert.deepEqual(
    rec.updates.map((s) => s.version),
    [1, 2],
  );
});
