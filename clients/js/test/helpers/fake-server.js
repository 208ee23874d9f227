// A scriptable stand-in for the stk-relay gateway, built on Node built-ins only.
//
// It serves the three routes the browser client uses:
//   GET /v1/payments/{id}/ws      WebSocket (RFC 6455 handshake, text and close frames)
//   GET /v1/payments/{id}/events  Server-Sent Events
//   GET /v1/payments/{id}         JSON STATE
// Each test sets `server.ws`, `server.sse` and `server.get` to a function called once per
// request with a connection object and the 1-based request number for that route. Every
// request is counted (`server.counts`) and can be awaited (`server.waitFor`).
//
// (Files under test/ are also loaded by `node --test` as test files; this one has no side
// effects at import.)

import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import http from 'node:http';

const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

/** Encodes one unmasked server frame. */
export function encodeFrame(opcode, payload) {
  const body = Buffer.isBuffer(payload) ? payload : Buffer.from(payload ?? '');
  let header;
  if (body.length < 126) {
    header = Buffer.from([0x80 | opcode, body.length]);
  } else if (body.length < 65536) {
    header = Buffer.alloc(4);
    header[0] = 0x80 | opcode;
    header[1] = 126;
    header.writeUInt16BE(body.length, 2);
  } else {
    header = Buffer.alloc(10);
    header[0] = 0x80 | opcode;
    header[1] = 127;
    header.writeBigUInt64BE(BigInt(body.length), 2);
  }
  return Buffer.concat([header, body]);
}

/**
 * Incremental frame parser (both directions: unmasks when the mask bit is set).
 * Calls onFrame(opcode, payload) per complete frame. Fragmentation is not needed here.
 */
export function frameParser(onFrame) {
  let buf = Buffer.alloc(0);
  return (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    for (;;) {
      if (buf.length < 2) return;
      const opcode = buf[0] & 0x0f;
      const masked = (buf[1] & 0x80) !== 0;
      let len = buf[1] & 0x7f;
      let offset = 2;
      if (len === 126) {
        if (buf.length < 4) return;
        len = buf.readUInt16BE(2);
        offset = 4;
      } else if (len === 127) {
        if (buf.length < 10) return;
        len = Number(buf.readBigUInt64BE(2));
        offset = 10;
      }
      const maskLen = masked ? 4 : 0;
      if (buf.length < offset + maskLen + len) return;
      const mask = masked ? buf.subarray(offset, offset + 4) : null;
      const payload = Buffer.from(buf.subarray(offset + maskLen, offset + maskLen + len));
      if (mask) for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i & 3];
      buf = buf.subarray(offset + maskLen + len);
      onFrame(opcode, payload);
    }
  };
}

export function closePayload(code, reason = '') {
  if (code === undefined || code === null) return Buffer.alloc(0);
  const r = Buffer.from(reason);
  const p = Buffer.alloc(2 + r.length);
  p.writeUInt16BE(code, 0);
  r.copy(p, 2);
  return p;
}

function message(type, state) {
  return JSON.stringify({ type: type ?? (state.status === 'PENDING' ? 'PAYMENT_UPDATE' : 'PAYMENT_COMPLETED'), data: state });
}

function errorBody(status) {
  const code =
    { 400: 'MALFORMED_REQUEST', 401: 'UNAUTHORIZED', 403: 'FORBIDDEN', 404: 'PAYMENT_NOT_FOUND', 429: 'TOO_MANY_CONNECTIONS' }[
      status
    ] ?? 'SERVICE_UNAVAILABLE';
  return JSON.stringify({ error: { code, message: 'test' } });
}

/** Server side of one accepted WebSocket. */
class ServerSocket extends EventEmitter {
  constructor(socket) {
    super();
    this.socket = socket;
    this.closed = false;
    this.received = [];
    socket.on(
      'data',
      frameParser((opcode, payload) => {
        if (opcode === 0x8) {
          // The client's close: answer it (echo the code) and end.
          if (!this.closed) this.#write(encodeFrame(0x8, payload.subarray(0, 2)));
          this.closed = true;
          socket.end();
        } else if (opcode === 0x9) {
          this.#write(encodeFrame(0xa, payload));
        } else if (opcode === 0x1) {
          this.received.push(payload.toString());
        }
      }),
    );
    socket.on('error', () => {});
    socket.on('close', () => {
      this.closed = true;
      this.ended = true;
      this.emit('gone');
    });
  }

  #write(buf) {
    if (!this.socket.destroyed) this.socket.write(buf);
  }

  /** Sends a STATE as PAYMENT_UPDATE / PAYMENT_COMPLETED (type derived from status unless given). */
  send(state, type) {
    this.#write(encodeFrame(0x1, message(type, state)));
  }

  sendRaw(text) {
    this.#write(encodeFrame(0x1, text));
  }

  /** Close frame with a code (none when code is null), then end the TCP connection. */
  close(code = 1000, reason = '') {
    if (this.closed) return;
    this.closed = true;
    this.#write(encodeFrame(0x8, closePayload(code, reason)));
    this.socket.end();
  }

  /** Drops the TCP connection without a close frame (the browser sees 1006). */
  destroy() {
    this.closed = true;
    this.socket.destroy();
  }
}

/** Server side of one accepted SSE stream. */
class SseStream extends EventEmitter {
  constructor(res) {
    super();
    this.res = res;
    this.closed = false;
    res.on('close', () => {
      this.closed = true;
      this.ended = true;
      this.emit('gone');
    });
  }

  send(state, type) {
    if (this.closed) return;
    const t = type ?? (state.status === 'PENDING' ? 'PAYMENT_UPDATE' : 'PAYMENT_COMPLETED');
    this.res.write(`event: ${t}\ndata: ${message(t, state)}\n\n`);
  }

  comment(text = 'ping') {
    if (!this.closed) this.res.write(`: ${text}\n\n`);
  }

  /** Ends the stream normally (as after PAYMENT_COMPLETED, or node shutdown). */
  end() {
    this.closed = true;
    this.res.end();
  }

  destroy() {
    this.closed = true;
    this.res.socket?.destroy();
  }
}

/**
 * Starts the fake gateway on 127.0.0.1 with a free port.
 * @returns {Promise<FakeServer>}
 */
export async function startServer() {
  const srv = new FakeServer();
  await srv.listen();
  return srv;
}

export class FakeServer extends EventEmitter {
  constructor() {
    super();
    this.counts = { ws: 0, sse: 0, get: 0 };
    /** Every request URL (path and query), in order. */
    this.requests = [];
    /** Open server-side connections, closed by `stop()`. */
    this.open = new Set();
    this.ws = (conn) => conn.reject(503);
    this.sse = (conn) => conn.reject(503);
    this.get = (conn) => conn.reject(503);
    this.http = http.createServer((req, res) => this.#onRequest(req, res));
    this.http.on('upgrade', (req, socket, head) => this.#onUpgrade(req, socket, head));
    this.http.on('clientError', (_err, socket) => socket.destroy());
  }

  listen() {
    return new Promise((resolve) => {
      this.http.listen(0, '127.0.0.1', () => {
        this.url = `http://127.0.0.1:${this.http.address().port}`;
        resolve();
      });
    });
  }

  /** Resolves once `counts[kind] >= n`; rejects after `ms` as a guard against hangs. */
  waitFor(kind, n, ms = 5000) {
    if (this.counts[kind] >= n) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const guard = setTimeout(() => {
        this.off('request', check);
        reject(new Error(`timed out waiting for ${kind} request #${n} (have ${this.counts[kind]})`));
      }, ms);
      const check = () => {
        if (this.counts[kind] >= n) {
          clearTimeout(guard);
          this.off('request', check);
          resolve();
        }
      };
      this.on('request', check);
    });
  }

  total() {
    return this.counts.ws + this.counts.sse + this.counts.get;
  }

  #route(url) {
    const m = /^\/v1\/payments\/([^/?]+)(\/ws|\/events)?(?:\?|$)/.exec(url);
    if (!m) return null;
    return { id: decodeURIComponent(m[1]), kind: m[2] === '/ws' ? 'ws' : m[2] === '/events' ? 'sse' : 'get' };
  }

  #count(kind, req) {
    this.counts[kind]++;
    this.requests.push(req.url);
    const n = this.counts[kind];
    queueMicrotask(() => this.emit('request', kind, n));
    return n;
  }

  #onRequest(req, res) {
    const route = this.#route(req.url);
    if (!route) {
      res.writeHead(404, { 'content-type': 'application/json' }).end(errorBody(404));
      return;
    }
    if (route.kind === 'ws') {
      // A plain GET on the WebSocket route, as the gateway answers it.
      res.writeHead(400, { 'content-type': 'application/json' }).end(errorBody(400));
      return;
    }
    const n = this.#count(route.kind, req);
    this.open.add(res);
    res.on('close', () => this.open.delete(res));
    const reject = (status, body) => {
      res.writeHead(status, { 'content-type': 'application/json' }).end(body ?? errorBody(status));
    };
    if (route.kind === 'get') {
      this.get(
        {
          req,
          reject,
          json: (state, status = 200) => {
            res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' }).end(JSON.stringify(state));
          },
          destroy: () => res.socket?.destroy(),
        },
        n,
      );
    } else {
      this.sse(
        {
          req,
          reject,
          accept: () => {
            res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store' });
            res.write('retry: 3000\n\n');
            return new SseStream(res);
          },
        },
        n,
      );
    }
  }

  #onUpgrade(req, socket) {
    const route = this.#route(req.url);
    socket.on('error', () => {});
    if (!route || route.kind !== 'ws') {
      socket.end('HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
      return;
    }
    const n = this.#count('ws', req);
    this.open.add(socket);
    socket.on('close', () => this.open.delete(socket));
    this.ws(
      {
        req,
        reject: (status, body) => {
          const b = body ?? errorBody(status);
          socket.end(
            `HTTP/1.1 ${status} Refused\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(b)}\r\nconnection: close\r\n\r\n${b}`,
          );
        },
        /** Drops the connection before answering the upgrade (a proxy that cannot upgrade). */
        destroy: () => socket.destroy(),
        accept: () => {
          const key = req.headers['sec-websocket-key'];
          const accept = createHash('sha1').update(key + WS_GUID).digest('base64');
          socket.write(
            'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
              `Sec-WebSocket-Accept: ${accept}\r\n\r\n`,
          );
          return new ServerSocket(socket);
        },
      },
      n,
    );
  }

  /** Closes the listener and every connection still open. */
  async stop() {
    for (const c of this.open) {
      if (typeof c.destroy === 'function') c.destroy();
      else c.socket?.destroy();
    }
    this.http.closeAllConnections?.();
    await new Promise((resolve) => this.http.close(() => resolve()));
  }
}
