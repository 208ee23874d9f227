// Version-3 corrections of an UNCONFIRMED final state (docs/api.md, "Corrections").
//
// Documented behaviour: onFinal fires once, with the first final state. A correction seen
// before any final state is simply the final state. With `watchCorrection`, after an
// UNCONFIRMED final the watcher polls GET for a while; a correction is then reported with
// onUpdate(state) and onCorrection(state, previousFinal), never with a second onFinal.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { correction, harness, pending, success, unconfirmed, until, within } from './helpers/util.js';

function finalThenClose(s, state) {
  s.ws = (conn) => {
    const ws = conn.accept();
    ws.send(pending());
    ws.send(state);
    ws.close(1000);
  };
}

test('default: UNCONFIRMED is final, the watcher stops and does not look for a correction', async (t) => {
  const { server, handle, rec, timers } = await harness(t, (s) => finalThenClose(s, unconfirmed()));
  const final = await within(handle.done);
  assert.equal(final.reason, 'UNCONFIRMED');
  assert.equal(handle.transport, null);
  assert.equal(timers.pending.size, 0);
  assert.equal(server.counts.get, 0);
  assert.deepEqual(rec.corrections, []);
});

test('a correction already made when connecting is the final state: onFinal, no onCorrection', async (t) => {
  const { handle, rec } = await harness(t, (s) => finalThenClose(s, correction()));
  const final = await within(handle.done);
  assert.equal(final.version, 3);
  assert.deepEqual(rec.log.slice(1), [
    ['update', 1],
    ['update', 3],
    ['final', 3],
  ]);
});

test('watchCorrection: a later correction gives onUpdate + onCorrection, onFinal stays once', async (t) => {
  const { server, handle, rec, timers } = await harness(
    t,
    (s) => {
      finalThenClose(s, unconfirmed());
      s.get = (conn, n) => {
        if (n === 1) conn.json(pending()); // older than held: ignored
        else if (n === 2) conn.reject(503); // transient: keep watching
        else if (n === 3) conn.json(unconfirmed()); // same version: ignored
        else conn.json(correction());
      };
    },
    { watchCorrection: { windowMs: 1000, intervalMs: 5 } },
  );
  const first = await within(handle.done);
  assert.equal(first.reason, 'UNCONFIRMED', 'done carries the first final state');
  const corrected = await within(rec.correction.promise, 5000, 'correction');
  assert.equal(corrected.status, 'SUCCESS');
  assert.equal(corrected.version, 3);
  assert.deepEqual(rec.log, [
    ['transport', 'websocket'],
    ['update', 1],
    ['update', 2],
    ['final', 2],
    ['update', 3],
    ['correction', 3],
  ]);
  assert.equal(rec.corrections[0][1].reason, 'UNCONFIRMED', 'onCorrection gets the previous final');
  assert.equal(rec.finals.length, 1);
  assert.equal(handle.state.version, 3);
  assert.equal(server.counts.get, 4);
  assert.equal(timers.pending.size, 0);
  assert.equal(handle.transport, null);
});

test('watchCorrection: bounded by its window, then stops', async (t) => {
  const { server, handle, rec, timers } = await harness(
    t,
    (s) => {
      finalThenClose(s, unconfirmed());
      s.get = (conn) => conn.json(unconfirmed());
    },
    { watchCorrection: { windowMs: 30, intervalMs: 10 } },
  );
  await within(handle.done);
  await within(server.waitFor('get', 3));
  await until(() => handle.transport === null, 5000, 'watch to end');
  assert.equal(server.counts.get, 3, 'windowMs / intervalMs polls');
  assert.equal(timers.pending.size, 0);
  assert.equal(rec.corrections.length, 0);
});

test('watchCorrection: a 401 (token expired) ends the watch quietly', async (t) => {
  const { server, handle, rec, timers } = await harness(
    t,
    (s) => {
      finalThenClose(s, unconfirmed());
      s.get = (conn) => conn.reject(401);
    },
    { watchCorrection: true },
  );
  // The default interval (15 s) is far too long for a test: replace it by checking that the
  // watch armed exactly one timer, then drive the rest through a short window.
  await within(handle.done);
  assert.equal(timers.pending.size, 1);
  handle.close();
  assert.equal(timers.pending.size, 0);

  const second = await harness(
    t,
    (s) => {
      finalThenClose(s, unconfirmed());
      s.get = (conn) => conn.reject(401);
    },
    { watchCorrection: { windowMs: 1000, intervalMs: 5 } },
  );
  await within(second.handle.done);
  await within(second.server.waitFor('get', 1));
  await until(() => second.handle.transport === null, 5000, 'watch to end');
  assert.equal(second.server.counts.get, 1);
  assert.deepEqual(second.rec.errors, []);
  assert.equal(second.rec.finals.length, 1);
  assert.equal(second.timers.pending.size, 0);
  assert.equal(server.counts.get, 0);
  assert.deepEqual(rec.errors, []);
});

test('watchCorrection only applies to UNCONFIRMED: a success stops at once', async (t) => {
  const { server, handle, timers } = await harness(t, (s) => finalThenClose(s, success()), {
    watchCorrection: { windowMs: 1000, intervalMs: 5 },
  });
  await within(handle.done);
  assert.equal(handle.transport, null);
  assert.equal(timers.pending.size, 0);
  assert.equal(server.counts.get, 0);
});
