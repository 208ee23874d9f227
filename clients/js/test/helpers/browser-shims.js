// Minimal browser-compatible WebSocket and EventSource classes over node:http, so the tests
// run on a plain Node 20 (whose global WebSocket needs --experimental-websocket and which has
// no EventSource). They follow the browser behaviour the client relies on:
//
// WebSocket: a failed handshake (any non-101 answer, or a dropped connection) fires `error`
// then `close` with code 1006, before any `open`; a connection lost without a close frame
// fires `close` 1006; a close frame without a code fires `close` 1005.
//
// EventSource: an answer other than 200 text/event-stream fires `error` and ends in CLOSED
// (no reconnection); a stream that ends fires `error` and reconnects after `retry` ms.

import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import { closePayload, encodeFrame, frameParser } from './fake-server.js';

const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

class Emitter {
  #listeners = new Map();

  addEventListener(type, fn) {
    if (!this.#listeners.has(type)) this.#listeners.set(type, new Set());
    this.#listeners.get(type).add(fn);
  }

  removeEventListener(type, fn) {
    this.#listeners.get(type)?.delete(fn);
  }

  listenerCount(type) {
    return this.#listeners.get(type)?.size ?? 0;
  }

  _emit(type, props = {}) {
    const ev = { type, target: this, ...props };
    const prop = this['on' + type];
    if (typeof prop === 'function') prop.call(this, ev);
    for (const fn of [...(this.#listeners.get(type) ?? [])]) fn.call(this, ev);
  }
}

function maskedFrame(opcode, payload) {
  const frame = encodeFrame(opcode, payload);
  // Rebuild with the mask bit and a mask key, as clients must.
  const lenByte = frame[1];
  const headerLen = lenByte === 126 ? 4 : lenByte === 127 ? 10 : 2;
  const header = Buffer.from(frame.subarray(0, headerLen));
  header[1] |= 0x80;
  const mask = randomBytes(4);
  const body = Buffer.from(frame.subarray(headerLen));
  for (let i = 0; i < body.length; i++) body[i] ^= mask[i & 3];
  return Buffer.concat([header, mask, body]);
}

export class NodeWebSocket extends Emitter {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;

  constructor(url) {
    super();
    const u = new URL(url);
    if (u.protocol !== 'ws:') throw new SyntaxError(`unsupported URL ${u.protocol}`);
    this.url = url;
    this.readyState = 0;
    this.onopen = this.onmessage = this.onerror = this.onclose = null;
    this._socket = null;
    this._closeSent = false;
    const key = randomBytes(16).toString('base64');
    const expected = createHash('sha1').update(key + WS_GUID).digest('base64');
    this._req = http.request({
      host: u.hostname,
      port: u.port,
      path: u.pathname + u.search,
      headers: {
        Connection: 'Upgrade',
        Upgrade: 'websocket',
        'Sec-WebSocket-Key': key,
        'Sec-WebSocket-Version': '13',
      },
    });
    this._req.on('upgrade', (res, socket, head) => {
      if (this.readyState !== 0) {
        socket.destroy();
        return;
      }
      if (res.headers['sec-websocket-accept'] !== expected) {
        socket.destroy();
        this._fail();
        return;
      }
      this._socket = socket;
      socket.on('error', () => {});
      socket.on('close', () => this._finish(1006, '', false));
      const parse = frameParser((opcode, payload) => this._onFrame(opcode, payload));
      socket.on('data', parse);
      this.readyState = 1;
      this._emit('open');
      if (head && head.length) parse(head);
    });
    this._req.on('response', (res) => {
      res.resume();
      this._fail();
    });
    this._req.on('error', () => this._fail());
    this._req.end();
  }

  _onFrame(opcode, payload) {
    if (this.readyState === 3) return;
    if (opcode === 0x1) {
      if (this.readyState === 1) this._emit('message', { data: payload.toString('utf8') });
    } else if (opcode === 0x9) {
      this._socket.write(maskedFrame(0xa, payload));
    } else if (opcode === 0x8) {
      const code = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
      const reason = payload.length > 2 ? payload.subarray(2).toString() : '';
      if (!this._closeSent) {
        this._closeSent = true;
        this._socket.write(maskedFrame(0x8, payload.subarray(0, 2)));
      }
      this._socket.end();
      this._finish(code, reason, true);
    }
  }

  _fail() {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this._req.destroy();
    this._socket?.destroy();
    this._emit('error');
    this._emit('close', { code: 1006, reason: '', wasClean: false });
  }

  _finish(code, reason, wasClean) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this._emit('close', { code, reason, wasClean });
  }

  send(text) {
    if (this.readyState !== 1) throw new Error('InvalidStateError');
    this._socket.write(maskedFrame(0x1, String(text)));
  }

  close(code = 1000, reason = '') {
    if (this.readyState === 0) {
      this._fail();
      return;
    }
    if (this.readyState !== 1) return;
    this.readyState = 2;
    this._closeSent = true;
    this._socket.write(maskedFrame(0x8, closePayload(code, reason)));
  }
}

export class NodeEventSource extends Emitter {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSED = 2;

  constructor(url) {
    super();
    this.url = url;
    this.readyState = 0;
    this.onopen = this.onmessage = this.onerror = null;
    this._retry = 3000;
    this._timer = null;
    this._connect();
  }

  _connect() {
    this.readyState = 0;
    const req = http.get(this.url, { headers: { Accept: 'text/event-stream' } });
    this._req = req;
    req.on('error', () => this._lost());
    req.on('response', (res) => {
      const type = String(res.headers['content-type'] ?? '');
      if (res.statusCode !== 200 || !type.startsWith('text/event-stream')) {
        res.resume();
        this.readyState = 2;
        this._emit('error');
        return;
      }
      this.readyState = 1;
      this._emit('open');
      let buf = '';
      let event = '';
      let data = [];
      res.setEncoding('utf8');
      res.on('data', (chunk) => {
        buf += chunk;
        const lines = buf.split(/\r\n|\r|\n/);
        buf = lines.pop();
        for (const line of lines) {
          if (this.readyState === 2) return;
          if (line === '') {
            if (data.length) this._emit(event || 'message', { data: data.join('\n') });
            event = '';
            data = [];
            continue;
          }
          if (line.startsWith(':')) continue;
          const i = line.indexOf(':');
          const field = i < 0 ? line : line.slice(0, i);
          let value = i < 0 ? '' : line.slice(i + 1);
          if (value.startsWith(' ')) value = value.slice(1);
          if (field === 'event') event = value;
          else if (field === 'data') data.push(value);
          else if (field === 'retry' && /^\d+$/.test(value)) this._retry = Number(value);
        }
      });
      res.on('end', () => this._lost());
      res.on('error', () => this._lost());
    });
  }

  _lost() {
    if (this.readyState === 2) return;
    this.readyState = 0;
    this._emit('error');
    if (this.readyState === 2) return;
    this._timer = setTimeout(() => this._connect(), this._retry);
    this._timer.unref();
  }

  close() {
    this.readyState = 2;
    clearTimeout(this._timer);
    this._req?.destroy();
  }
}

/** A WebSocket class with its own list of instances, for one test. */
export function webSocketClass() {
  return class extends NodeWebSocket {
    static instances = [];
    constructor(url) {
      super(url);
      this.constructor.instances.push(this);
    }
  };
}

export function eventSourceClass() {
  return class extends NodeEventSource {
    static instances = [];
    constructor(url) {
      super(url);
      this.constructor.instances.push(this);
    }
  };
}
