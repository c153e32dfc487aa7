/**
 * `ApiError`: every error answer of the service (RFC 9457 `application/problem+json`), and any
 * other non-2xx answer on the way (a proxy's 502 page, an object store's refusal), as one class
 * with the problem's stable `code`.
 */
import type { Problem } from '../generated/index.js';

/** An error answer of the download service (or of the proxy or object store in front of it). */
export class ApiError extends Error {
  /** HTTP status of the answer. */
  readonly status: number;
  /**
   * Stable machine-readable code (`VALIDATION_FAILED`, `NOT_FOUND`, `RATE_LIMITED`, ...; see the
   * service's README). `HTTP_<status>` when the answer was not a problem document.
   */
  readonly code: string;
  /** What went wrong with this request (the problem's `detail`, else the body's text). */
  readonly detail: string;
  /** The field, parameter or header to blame, when the problem names one. */
  readonly field: string | undefined;
  /** Seconds to wait before retrying, from `Retry-After` (delay-seconds or HTTP-date). */
  readonly retryAfterSeconds: number | undefined;
  /** The server's `X-Request-ID`, to quote when asking about this error. */
  readonly requestId: string | undefined;
  /** The whole problem document, when the answer was one. */
  readonly problem: Problem | undefined;

  constructor(init: {
    status: number;
    code: string;
    detail: string;
    field?: string | undefined;
    retryAfterSeconds?: number | undefined;
    requestId?: string | undefined;
    problem?: Problem | undefined;
  }) {
    super(`${init.status} ${init.code}: ${init.detail}`);
    this.name = 'ApiError';
    this.status = init.status;
    this.code = init.code;
    this.detail = init.detail;
    this.field = init.field;
    this.retryAfterSeconds = init.retryAfterSeconds;
    this.requestId = init.requestId;
    this.problem = init.problem;
  }

  /**
   * Builds the error from an answer's already-read body (parsed JSON, or text when it was not
   * JSON) and its response (for the status and headers).
   */
  static fromAnswer(body: unknown, response: Response): ApiError {
    const problem = isProblem(body) ? body : undefined;
    const text = typeof body === 'string' ? body.trim() : '';
    return new ApiError({
      status: problem?.status ?? response.status,
      code: problem?.code ?? `HTTP_${response.status}`,
      detail: problem?.detail ?? (text.slice(0, 500) || response.statusText || 'no detail'),
      field: problem?.field ?? undefined,
      retryAfterSeconds: parseRetryAfter(response.headers.get('Retry-After')),
      requestId: response.headers.get('X-Request-ID') ?? undefined,
      problem,
    });
  }

  /** Reads a failed response's body and builds the error from it. */
  static async fromResponse(response: Response): Promise<ApiError> {
    const text = await response.text().catch(() => '');
    let body: unknown = text;
    try {
      body = JSON.parse(text);
    } catch {
      // not JSON: keep the text
    }
    return ApiError.fromAnswer(body, response);
  }
}

/** Whether a parsed body is an RFC 9457 problem carrying the service's `code`. */
function isProblem(body: unknown): body is Problem {
  if (typeof body !== 'object' || body === null) return false;
  const candidate = body as Record<string, unknown>;
  return typeof candidate.code === 'string' && typeof candidate.status === 'number';
}

/**
 * Seconds from a `Retry-After` header: delay-seconds, or an HTTP-date (seconds from now, at least
 * 0). Undefined when absent or unreadable.
 */
export function parseRetryAfter(value: string | null | undefined): number | undefined {
  if (value === null || value === undefined || value.trim() === '') return undefined;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed);
  const date = Date.parse(trimmed);
  if (Number.isNaN(date)) return undefined;
  return Math.max(0, Math.ceil((date - Date.now()) / 1000));
}
