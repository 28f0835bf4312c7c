// Parses what guest init writes on the tsibox.status port: the workload's exit
// status as ASCII decimal followed by "\n". The first valid line wins.

const MAX_LINE = 16;

export class ExitStatusParser {
  #line = '';
  #done = false;
  readonly #onStatus: (status: number) => void;
  readonly #onGarbage: (text: string) => void;

  constructor(onStatus: (status: number) => void, onGarbage: (text: string) => void) {
    this.#onStatus = onStatus;
    this.#onGarbage = onGarbage;
  }

  push(bytes: Uint8Array): void {
    for (const b of bytes) {
      if (this.#done) return;
      if (b !== 0x0a) {
        // Bounded: a guest cannot make us buffer an endless line.
        if (this.#line.length < MAX_LINE) this.#line += String.fromCharCode(b);
        continue;
      }
      const line = this.#line.trim();
      this.#line = '';
      if (/^\d{1,10}$/.test(line) && Number(line) <= 0xffff_ffff) {
        this.#done = true;
        this.#onStatus(Number(line));
      } else {
        this.#onGarbage(line);
      }
    }
  }
}
