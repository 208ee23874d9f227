// Option checking and URL building (no network).

import assert from 'node:assert/strict';
import { test } from 'node:test';
import watchPaymentDefault, { PaymentError, TRANSPORTS, watchPayment } from '../src/index.js';

const noop = () => {};
const base = {
  baseUrl: 'https://pay.example.com',
  checkoutRequestId: 'ws_CO_1',
  token: 'tok',
  onUpdate: noop,
  onFinal: noop,
};

/** A WebSocket stand-in that records its URL and never connects. */
function recordingWebSocket() {
  const urls = [];
  class Recording {
    constructor(url) {
      urls.push(url);
    }
    close() {}
  }
  return { urls, Recording };
}

async function firstUrl(options) {
  const { urls, Recording } = recordingWebSocket();
  const h = watchPayment({ ...base, WebSocketImpl: Recording, ...options });
  await new Promise((r) => setImmediate(r));
  h.close();
  return urls[0];
}

test('exports', () => {
  assert.equal(watchPaymentDefault, watchPayment);
  assert.deepEqual([...TRANSPORTS], ['websocket', 'sse', 'polling']);
  const e = new PaymentError('NOT_FOUND', 'x', { status: 404, serverCode: 'PAYMENT_NOT_FOUND' });
  assert.ok(e instanceof Error);
  assert.equal(e.name, 'PaymentError');
  assert.deepEqual([e.code, e.status, e.serverCode], ['NOT_FOUND', 404, 'PAYMENT_NOT_FOUND']);
});

test('URLs: https base → wss, path prefix kept, trailing slash and query dropped, parts encoded', async () => {
  assert.equal(
    await firstUrl({ baseUrl: 'https://pay.example.com' }),
    'wss://pay.example.com/v1/payments/ws_CO_1/ws?token=tok',
  );
  assert.equal(
    await firstUrl({ baseUrl: 'http://localhost:8080/relay/?x=1', token: 'a+b/c=.d' }),
    'ws://localhost:8080/relay/v1/payments/ws_CO_1/ws?token=a%2Bb%2Fc%3D.d',
  );
  assert.equal(
    await firstUrl({ baseUrl: 'wss://pay.example.com', checkoutRequestId: 'a/b?c' }),
    'wss://pay.example.com/v1/payments/a%2Fb%3Fc/ws?token=tok',
  );
});

test('URLs: a relative baseUrl resolves against the page location', async (t) => {
  const saved = Object.getOwnPropertyDescriptor(globalThis, 'location');
  Object.defineProperty(globalThis, 'location', {
    value: { href: 'https://shop.example/checkout/42' },
    configurable: true,
  });
  t.after(() => {
    if (saved) Object.defineProperty(globalThis, 'location', saved);
    else delete globalThis.location;
  });
  assert.equal(await firstUrl({ baseUrl: '' }), 'wss://shop.example/v1/payments/ws_CO_1/ws?token=tok');
  assert.equal(await firstUrl({ baseUrl: undefined }), 'wss://shop.example/v1/payments/ws_CO_1/ws?token=tok');
  assert.equal(await firstUrl({ baseUrl: '/pay' }), 'wss://shop.example/pay/v1/payments/ws_CO_1/ws?token=tok');
});

test('URLs: the SSE and GET routes', async () => {
  const seen = [];
  class ES {
    constructor(url) {
      seen.push(url);
    }
    addEventListener() {}
    removeEventListener() {}
    close() {}
  }
  const h1 = watchPayment({ ...base, transports: ['sse'], EventSourceImpl: ES });
  await new Promise((r) => setImmediate(r));
  h1.close();
  const h2 = watchPayment({
    ...base,
    transports: ['polling'],
    fetchImpl: (url, init) => {
      seen.push(url);
      assert.equal(init.method, 'GET');
      assert.equal(init.cache, 'no-store');
      return new Promise(noop);
    },
  });
  await new Promise((r) => setImmediate(r));
  h2.close();
  assert.deepEqual(seen, [
    'https://pay.example.com/v1/payments/ws_CO_1/events?token=tok',
    'https://pay.example.com/v1/payments/ws_CO_1?token=tok',
  ]);
});

test('invalid options throw TypeError at once', () => {
  const bad = [
    undefined,
    { ...base, checkoutRequestId: '' },
    { ...base, token: undefined },
    { ...base, onUpdate: undefined },
    { ...base, onFinal: 'x' },
    { ...base, onError: 5 },
    { ...base, transports: [] },
    { ...base, transports: ['websocket', 'carrier-pigeon'] },
    { ...base, backoff: { initialMs: 0 } },
    { ...base, backoff: { initialMs: 100, maxMs: 50 } },
    { ...base, pollIntervalMs: -1 },
    { ...base, signal: {} },
    { ...base, baseUrl: 'ftp://pay.example.com' },
    { ...base, baseUrl: '/relative-outside-a-page' },
  ];
  for (const options of bad) {
    assert.throws(() => watchPayment(options), TypeError, JSON.stringify(options));
  }
});

test('transports can be narrowed and reordered; unavailable ones are skipped', async () => {
  const order = [];
  class ES {
    constructor() {
      order.push('sse');
    }
    addEventListener() {}
    removeEventListener() {}
    close() {}
  }
  const transports = [];
  const h = watchPayment({
    ...base,
    transports: ['sse', 'websocket'],
    EventSourceImpl: ES,
    WebSocketImpl: null,
    onTransport: (name) => transports.push(name),
  });
  await new Promise((r) => setImmediate(r));
  assert.equal(h.transport, 'sse');
  h.close();
  assert.equal(h.transport, null);
  assert.deepEqual(order, ['sse']);
  assert.deepEqual(transports, ['sse']);
});
