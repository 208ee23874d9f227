// Types for @stk-relay/client (src/index.js). Hand-written; there is no build step.

/** `status` of a payment. Only `PENDING` changes (once), except for a version-3 correction. */
export type PaymentStatus = 'PENDING' | 'SUCCESS' | 'FAILED';

/** Why a payment failed (docs/api.md, "reason values"). Unknown future values are strings. */
export type FailureReason =
  | 'INSUFFICIENT_FUNDS'
  | 'AMOUNT_LIMIT'
  | 'DAILY_LIMIT'
  | 'MERCHANT_BALANCE_LIMIT'
  | 'DUPLICATE_REQUEST'
  | 'SYSTEM_BUSY'
  | 'SUBSCRIBER_BUSY'
  | 'CANCELLED_BY_USER'
  | 'TIMEOUT'
  | 'PUSH_FAILED'
  | 'WRONG_PIN'
  | 'NOT_PERMITTED'
  | 'PIN_LOCKED'
  | 'OPERATOR_NOT_FOUND'
  | 'UNKNOWN'
  | 'UNCONFIRMED'
  | (string & {});

/** The STATE object, as sent by the gateway (docs/api.md, "The STATE object"). */
export interface PaymentState {
  checkoutRequestId: string;
  merchantRequestId: string;
  status: PaymentStatus;
  reason: FailureReason | null;
  resultCode: number | string | null;
  resultDesc: string | null;
  mpesaReceiptNumber: string | null;
  amount: number | null;
  phoneNumber: string | null;
  transactionDate: string | null;
  timestamp: string;
  completedAt: string | null;
  resultSource: 'CALLBACK' | 'STK_QUERY' | 'RECONCILIATION' | null;
  /** 1 pending, 2 final, 3 correction of an UNCONFIRMED final. */
  version: number;
}

export type Transport = 'websocket' | 'sse' | 'polling';

export type PaymentErrorCode = 'UNAUTHORIZED' | 'NOT_FOUND' | 'FORBIDDEN' | 'BAD_REQUEST' | 'NO_TRANSPORT';

/** A permanent failure; the watcher has stopped. */
export class PaymentError extends Error {
  constructor(
    code: PaymentErrorCode,
    message: string,
    details?: { status?: number | null; serverCode?: string | null },
  );
  readonly name: 'PaymentError';
  readonly code: PaymentErrorCode;
  /** HTTP status, when the error came from an HTTP answer. */
  readonly status: number | null;
  /** `error.code` of the gateway's JSON error body, e.g. `PAYMENT_NOT_FOUND`. */
  readonly serverCode: string | null;
}

export interface WatchPaymentOptions {
  /**
   * Gateway URL, e.g. `https://pay.example.com` or `https://shop.example/relay`.
   * Empty, absent or relative: resolved against the page (`location.href`).
   */
  baseUrl?: string;
  /** The payment's CheckoutRequestID (`checkout_request_id` of `POST /v1/stk/push`). */
  checkoutRequestId: string;
  /** The subscribe token (`token` of `POST /v1/stk/push`). */
  token: string;
  /** Every state newer (higher `version`) than the one held, the final one included. */
  onUpdate: (state: PaymentState) => void;
  /** The first final state (status not PENDING): exactly once per watcher. */
  onFinal: (state: PaymentState) => void;
  /** A permanent failure (401, 404, 403, other 4xx, no transport); the watcher stopped. */
  onError?: (error: PaymentError) => void;
  /** The transport now in use: at start and after each fallback. */
  onTransport?: (transport: Transport) => void;
  /** With `watchCorrection`: a version-3 correction of the UNCONFIRMED final state. */
  onCorrection?: (state: PaymentState, previous: PaymentState) => void;
  /** Aborting it stops the watcher, like `close()`. */
  signal?: AbortSignal;
  /** Allowed transports, in order of preference. Default `['websocket', 'sse', 'polling']`. */
  transports?: Transport[];
  /** Reconnect backoff with full jitter. Default `{ initialMs: 500, maxMs: 10000 }`. */
  backoff?: { initialMs?: number; maxMs?: number };
  /** Interval between successful polls. Default 3000, at most 60000. */
  pollIntervalMs?: number;
  /**
   * Consecutive failures before falling back to the next transport (failures before the
   * connection opened) or, on the last transport, before checking the status with one GET.
   * Default 3.
   */
  failuresBeforeFallback?: number;
  /**
   * After an UNCONFIRMED final state, keep polling `GET` every `intervalMs` (default 15000)
   * for `windowMs` (default 300000) in case a version-3 correction arrives. Default off.
   */
  watchCorrection?: boolean | { windowMs?: number; intervalMs?: number };

  /** Test hook; default `globalThis.WebSocket`. `null` disables the transport. */
  WebSocketImpl?: (new (url: string) => WebSocket) | null;
  /** Test hook; default `globalThis.EventSource`. `null` disables the transport. */
  EventSourceImpl?: (new (url: string) => EventSource) | null;
  /** Test hook; default `globalThis.fetch`. `null` disables polling and status checks. */
  fetchImpl?: typeof fetch | null;
  /** Test hook; default `Math.random`. Must return a number in [0, 1). */
  random?: () => number;
  /** Test hook; default `globalThis.setTimeout`. */
  setTimeout?: (fn: () => void, ms: number) => unknown;
  /** Test hook; default `globalThis.clearTimeout`. */
  clearTimeout?: (handle: any) => void;
}

export interface PaymentWatch {
  /** Stops the watcher: closes the connection, cancels requests and timers. Idempotent. */
  close(): void;
  /** The state with the highest version applied so far, or null. */
  readonly state: PaymentState | null;
  /** The transport in use, or null once stopped. */
  readonly transport: Transport | null;
  /**
   * Resolves with the first final state, or with null when closed or aborted before it;
   * rejects with the PaymentError given to onError.
   */
  readonly done: Promise<PaymentState | null>;
}

/** Follows one payment until it is final. See the README for the guarantees. */
export function watchPayment(options: WatchPaymentOptions): PaymentWatch;

/** Delay before retry `attempt` (0-based): random in [0, min(maxMs, initialMs * 2^attempt)). */
export function backoffDelay(attempt: number, initialMs: number, maxMs: number, random?: () => number): number;

export const TRANSPORTS: readonly Transport[];

export default watchPayment;
