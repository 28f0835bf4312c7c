// Every netstack parser returns a ParseResult instead of throwing: a frame is hostile
// input, and a malformed one is an expected outcome, not an exception.
export type ParseResult<T> = { ok: true; value: T } | { ok: false; error: string };

export const ok = <T>(value: T): ParseResult<T> => ({ ok: true, value });
export const fail = <T>(error: string): ParseResult<T> => ({ ok: false, error });
