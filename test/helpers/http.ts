// A plain HTTP GET for tests that fetch pages from guest servers published on the host.
import { get as httpGet } from 'node:http';

/** GET http://127.0.0.1:port/ → the body, or 'error CODE'. Bounded: 5 s. */
export function fetchPage(port: number): Promise<string> {
  return new Promise((resolve) => {
    httpGet({ host: '127.0.0.1', port, path: '/', timeout: 5000 }, (res) => {
      let b = '';
      res.setEncoding('utf8').on('data', (d: string) => (b += d)).on('end', () => { resolve(b); });
    }).on('error', (e: NodeJS.ErrnoException) => { resolve(`error ${e.code ?? e.message}`); }).on('timeout', function (this: { destroy(): void }) { this.destroy(); });
  });
}
