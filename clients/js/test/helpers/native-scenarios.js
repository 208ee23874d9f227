// Runs a few scenarios with Node's own (undici) WebSocket, EventSource and fetch, used with
// their defaults (no injection), to check the client against standard implementations.
// Started by native.test.js as
//   node --experimental-websocket --experimental-eventsource native-scenarios.js
// with STK_NATIVE_SCENARIOS=1; does nothing otherwise (node --test also loads this file).

import { watchPayment } from '../../src/index.js';
import { startServer } from './fake-server.js';
import { ID, pending, success, TOKEN } from './util.js';

async function scenario(name, setup, options = {}) {
  const server = await startServer();
  setup(server);
  const log = [];
  const guard = setTimeout(() => {
    console.log(JSON.stringify({ name, timeout: true, log, counts: server.counts }));
    process.exit(1);
  }, 8000);
  const handle = watchPayment({
    baseUrl: server.url,
    checkoutRequestId: ID,
    token: TOKEN,
    backoff: { initialMs: 5, maxMs: 20 },
    pollIntervalMs: 10,
    onUpdate: (s) => log.push(['update', s.version]),
    onFinal: (s) => log.push(['final', s.version]),
    onError: (e) => log.push(['error', e.code]),
    onTransport: (t) => log.push(['transport', t]),
    ...options,
  });
  try {
    await handle.done;
  } catch {
    /* recorded by onError */
  }
  clearTimeout(guard);
  await server.stop();
  return { name, log, counts: server.counts };
}

if (process.env.STK_NATIVE_SCENARIOS === '1') {
  const results = [];
  results.push({ globals: { WebSocket: typeof WebSocket, EventSource: typeof EventSource, fetch: typeof fetch } });
  results.push(
    await scenario('websocket', (s) => {
      s.ws = (conn, n) => {
        const ws = conn.accept();
        ws.send(pending());
        if (n === 1) ws.close(1001);
        else {
          ws.send(success());
          ws.close(1000);
        }
      };
    }),
  );
  results.push(
    await scenario('sse', (s) => {
      s.ws = (conn) => conn.reject(503);
      s.get = (conn) => conn.json(pending());
      s.sse = (conn) => {
        const stream = conn.accept();
        stream.send(pending());
        stream.send(success());
        stream.end();
      };
    }),
  );
  results.push(
    await scenario('polling', (s) => {
      s.ws = (conn) => conn.reject(503);
      s.sse = (conn) => conn.reject(503);
      s.get = (conn, n) => conn.json(n < 4 ? pending() : success());
    }),
  );
  results.push(
    await scenario('unauthorized', (s) => {
      s.ws = (conn) => conn.reject(401);
      s.get = (conn) => conn.reject(401);
    }),
  );
  console.log(JSON.stringify(results));
}
