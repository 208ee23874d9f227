// The client with Node's built-in (undici) WebSocket, EventSource and fetch as globals, as a
// browser would provide them: run in a child process with the experimental flags. Skipped
// when this Node has no such flags.

import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';

const flags = ['--experimental-websocket', '--experimental-eventsource'];
const probe = spawnSync(
  process.execPath,
  [...flags, '-e', 'process.exit(typeof WebSocket === "function" && typeof EventSource === "function" ? 0 : 1)'],
  { stdio: 'ignore' },
);
const skip = probe.status !== 0 && 'this Node has no global WebSocket / EventSource behind flags';

test('standard WebSocket / EventSource / fetch globals: websocket, sse, polling, 401', { skip, timeout: 20000 }, async () => {
  const script = fileURLToPath(new URL('./helpers/native-scenarios.js', import.meta.url));
  const stdout = await new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      ['--no-warnings', ...flags, script],
      { env: { ...process.env, STK_NATIVE_SCENARIOS: '1' }, timeout: 15000 },
      (err, out, errText) => (err ? reject(new Error(`${err.message}\n${out}\n${errText}`)) : resolve(out)),
    );
  });
  const [globals, websocket, sse, polling, unauthorized] = JSON.parse(stdout.trim().split('\n').pop());
  assert.deepEqual(globals.globals, { WebSocket: 'function', EventSource: 'function', fetch: 'function' });

  assert.deepEqual(websocket.log, [
    ['transport', 'websocket'],
    ['update', 1],
    ['update', 2],
    ['final', 2],
  ]);
  assert.equal(websocket.counts.ws, 2);

  assert.deepEqual(sse.log, [
    ['transport', 'websocket'],
    ['update', 1],
    ['transport', 'sse'],
    ['update', 2],
    ['final', 2],
  ]);
  assert.deepEqual(sse.counts, { ws: 3, get: 1, sse: 1 });

  assert.deepEqual(
    polling.log.filter(([k]) => k === 'transport'),
    [
      ['transport', 'websocket'],
      ['transport', 'sse'],
      ['transport', 'polling'],
    ],
  );
  assert.deepEqual(polling.log.slice(-1), [['final', 2]]);
  assert.equal(polling.log.filter(([k]) => k === 'final').length, 1);

  assert.deepEqual(unauthorized.log, [
    ['transport', 'websocket'],
    ['error', 'UNAUTHORIZED'],
  ]);
  assert.deepEqual(unauthorized.counts, { ws: 3, get: 1, sse: 0 });
});
