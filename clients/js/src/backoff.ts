/** Backoff configures the delay before each reconnect attempt. */
export interface Backoff {
  /** The first attempt's ceiling, in ms (default 500). */
  min: number;
  /** The largest ceiling, in ms (default 20000). */
  max: number;
  /** How much the ceiling grows per failed attempt (default 2). */
  factor: number;
}

export const defaultBackoff: Backoff = { min: 500, max: 20000, factor: 2 };

/**
 * backoffDelay is the delay before reconnect attempt `attempt` (0 for the
 * first): exponential backoff with full jitter, a uniform draw between 0
 * and min(max, min × factor^attempt), so that clients dropped together
 * come back spread out rather than in waves. A server's retry hint (ms) is
 * a floor: wsd already spreads the hints it gives a draining node's
 * clients.
 */
export function backoffDelay(b: Backoff, attempt: number, hintMs = 0, random: () => number = Math.random): number {
  const ceiling = Math.min(b.max, b.min * Math.pow(b.factor, attempt));
  return Math.max(hintMs, Math.floor(random() * ceiling));
}

/**
 * retryHint reads wsd's "retry-after=N" (seconds) from a close reason, in
 * ms; 0 if there is none.
 */
export function retryHint(reason: string): number {
  const m = /retry-after=(\d{1,6})(?!\d)/.exec(reason);
  return m ? Number(m[1]) * 1000 : 0;
}
