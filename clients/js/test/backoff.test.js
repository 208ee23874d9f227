// Reconnect delays: exponential, full jitter, capped, reset after a delivered message.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backoffDelay } from '../src/index.js';
import { harness, pending, sequence, success, within } from './helpers/util.js';

test('backoffDelay: random(0, min(cap, base * 2^n))', () => {
  const half = () => 0.5;
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5, 6].map((n) => backoffDelay(n, 100, 1000, half)),
    [50, 100, 200, 400, 500, 500, 500],
  );
  assert.equal(backoffDelay(3, 100, 1000, () => 0), 0, 'full jitter reaches zero');
  assert.equal(backoffDelay(3, 100, 1000, () => 0.999999), 799);
  assert.equal(backoffDelay(50, 100, 1000, () => 0.999999), 999, 'huge attempts stay under the cap');
  assert.equal(backoffDelay(2, 100, 1000, () => 1), 400, 'a random() of 1 still stays within the step');
  assert.equal(backoffDelay(2, 100, 1000, () => 7), 400, 'out-of-range random values are clamped');
  assert.equal(backoffDelay(2, 100, 1000, () => NaN), 0);
});

test('backoffDelay with Math.random: always within [0, cap]', () => {
  for (let n = 0; n < 40; n++) {
    for (let i = 0; i < 50; i++) {
      const d = backoffDelay(n, 500, 10000);
      assert.ok(Number.isInteger(d) && d >= 0 && d <= Math.min(10000, 500 * 2 ** n), `attempt ${n}: ${d}`);
    }
  }
});

test('reconnect delays follow full jitter, respect the cap, and reset after a message', async (t) => {
  const random = sequence([0.5, 0.25, 0.999, 0.75, 0.5, 0.5]);
  const { server, handle, rec, timers } = await harness(
    t,
    (s) => {
      s.ws = (conn, n) => {
        const ws = conn.accept();
        if (n <= 5) {
          ws.destroy(); // opens, delivers nothing, drops
        } else if (n === 6) {
          ws.send(pending()); // a message: the backoff starts again from the first step
          ws.destroy();
        } else {
          ws.send(success());
          ws.close(1000);
        }
      };
      s.get = (conn) => conn.json(pending());
    },
    { backoff: { initialMs: 8, maxMs: 20 }, random },
  );
  await within(handle.done);
  assert.equal(server.counts.ws, 7);
  // Steps: 8, 16, 20 (cap), 20, 20; then after the message 8 again.
  assert.deepEqual(timers.delays, [
    Math.floor(0.5 * 8),
    Math.floor(0.25 * 16),
    Math.floor(0.999 * 20),
    Math.floor(0.75 * 20),
    Math.floor(0.5 * 20),
    Math.floor(0.5 * 8),
  ]);
  assert.ok(timers.delays.every((d) => d <= 20));
  assert.equal(rec.finals.length, 1);
});

test('the backoff does not grow without bound over many failures', async (t) => {
  const { server, rec, timers } = await harness(
    t,
    (s) => {
      s.ws = (conn) => conn.reject(503);
      s.get = (conn) => conn.reject(503);
    },
    { transports: ['websocket'], backoff: { initialMs: 1, maxMs: 4 }, random: () => 0.999 },
  );
  await within(server.waitFor('ws', 12));
  assert.ok(timers.delays.length >= 10);
  assert.ok(timers.delays.every((d) => d <= 4), `delays ${timers.delays}`);
  assert.deepEqual(timers.delays.slice(0, 4), [0, 1, 3, 3]);
  // With only one transport and transient answers, it keeps trying and checks the status
  // with one GET every 3 failures.
  assert.ok(server.counts.get >= 3 && server.counts.get <= Math.ceil(server.counts.ws / 3));
  assert.equal(rec.errors.length, 0);
  assert.ok(timers.pending.size <= 1, 'one timer at a time');
});
