// The shape of one doctor check and a plain-text table of results.

export type CheckStatus = 'ok' | 'warn' | 'fail';

export interface CheckResult {
  name: string;
  status: CheckStatus;
  detail: string;
  /** Machine-readable facts behind the detail (printed by --json). */
  data?: Record<string, unknown>;
}

export function formatTable(results: readonly CheckResult[]): string {
  const nameW = Math.max(5, ...results.map((r) => r.name.length));
  const lines = [`${'check'.padEnd(nameW)}  status  detail`, `${'-'.repeat(nameW)}  ------  ${'-'.repeat(6)}`];
  for (const r of results) {
    const [first = '', ...rest] = r.detail.split('\n');
    lines.push(`${r.name.padEnd(nameW)}  ${r.status.padEnd(6)}  ${first}`);
    for (const more of rest) lines.push(`${''.padEnd(nameW)}          ${more}`);
  }
  return lines.join('\n') + '\n';
}

/** fail beats warn beats ok. */
export function worstStatus(results: readonly CheckResult[]): CheckStatus {
  if (results.some((r) => r.status === 'fail')) return 'fail';
  if (results.some((r) => r.status === 'warn')) return 'warn';
  return 'ok';
}
