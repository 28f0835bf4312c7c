// The one-way rule of the source tree (docs/architecture.md): every shipped file belongs
// to a layer; a file may import its own group and the groups of lower layers only, and
// groups on the same layer know nothing of each other. Also: no import cycles between
// files (type-only imports included), and shipped code never imports test code.
// Imports are read with TypeScript's own scanner (ts.preProcessFile), from the sources.
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';
import ts from 'typescript';

/** Layers from the bottom up; each entry is one group: a folder (ends with '/') or files. */
export const LAYERS: readonly (readonly { group: string; paths: readonly string[] }[])[] = [
  [{ group: 'netstack', paths: ['netstack/'] }],
  [{ group: 'base', paths: ['src/errors.ts', 'src/log.ts', 'src/log-rate.ts', 'src/paths.ts'] }],
  [{ group: 'sys', paths: ['src/sys/'] }],
  [
    { group: 'kvm', paths: ['src/kvm/'] },
    { group: 'memory', paths: ['src/memory/'] },
    { group: 'policy', paths: ['src/policy/'] },
    { group: 'portmap', paths: ['src/portmap/'] },
    { group: 'guest', paths: ['src/guest/'] },
  ],
  [{ group: 'shared-types', paths: ['src/guest-stream.ts', 'src/connection-records.ts'] }],
  [
    { group: 'proxies', paths: ['proxies/'] },
    { group: 'virtio', paths: ['src/virtio/'] },
  ],
  [
    { group: 'frame-filter', paths: ['src/frame-filter/'] },
    { group: 'vmm', paths: ['src/vmm/'] },
    { group: 'agent', paths: ['src/agent/'] },
  ],
  [{ group: 'engine', paths: ['src/engine/'] }],
  [{ group: 'sandbox-ports', paths: ['src/sandbox-ports.ts'] }],
  [{ group: 'sandbox', paths: ['src/sandbox.ts'] }],
  [
    { group: 'doctor', paths: ['src/doctor/'] },
    { group: 'bench', paths: ['src/bench/'] },
    { group: 'vmm-api', paths: ['src/vmm-api.ts'] },
  ],
  [
    { group: 'cli', paths: ['src/cli/'] },
    { group: 'index', paths: ['src/index.ts'] },
  ],
];

/** Folders whose files are shipped and checked. */
export const SHIPPED_ROOTS = ['src', 'proxies', 'netstack'] as const;

export interface Violation {
  kind: 'direction' | 'sibling' | 'unassigned' | 'test-import' | 'cycle';
  from: string;
  to: string;
  message: string;
}

interface Placement { group: string; layer: number }

function placement(file: string): Placement | null {
  for (let layer = 0; layer < LAYERS.length; layer++) {
    for (const g of LAYERS[layer]!) {
      if (g.paths.some((p) => (p.endsWith('/') ? file.startsWith(p) : file === p))) return { group: g.group, layer };
    }
  }
  return null;
}

function listTs(root: string, dir: string, out: string[]): void {
  for (const e of readdirSync(join(root, dir), { withFileTypes: true })) {
    const rel = `${dir}/${e.name}`;
    if (e.isDirectory()) listTs(root, rel, out);
    else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) out.push(rel);
  }
}

/** Relative imports of one file, resolved to repo-relative .ts paths. */
function importsOf(root: string, file: string): string[] {
  const info = ts.preProcessFile(readFileSync(join(root, file), 'utf8'), true, true);
  const out: string[] = [];
  for (const ref of info.importedFiles) {
    if (!ref.fileName.startsWith('.')) continue; // packages and node: built-ins
    const target = normalize(join(dirname(file), ref.fileName)).replace(/\.js$/, '.ts');
    out.push(target.endsWith('.ts') ? target : `${target}.ts`);
  }
  return out;
}

/** Every violation of the one-way rule in the tree at `root` (the package root). */
export function checkLayers(root: string): Violation[] {
  const files: string[] = [];
  for (const r of SHIPPED_ROOTS) listTs(root, r, files);
  const violations: Violation[] = [];
  const graph = new Map<string, string[]>();
  for (const from of files) {
    const pf = placement(from);
    if (pf === null) {
      violations.push({ kind: 'unassigned', from, to: '', message: `${from} belongs to no layer (add it to LAYERS in scripts/layers.ts and docs/architecture.md)` });
      continue;
    }
    const targets = importsOf(root, from);
    graph.set(from, targets);
    for (const to of targets) {
      const rel = relative(root, join(root, to));
      if (!SHIPPED_ROOTS.some((r) => rel.startsWith(`${r}/`))) {
        violations.push({ kind: 'test-import', from, to, message: `${from} imports ${to}: shipped code imports only shipped code` });
        continue;
      }
      const pt = placement(to);
      if (pt === null || pt.group === pf.group) continue;
      if (pt.layer > pf.layer) violations.push({ kind: 'direction', from, to, message: `${from} (${pf.group}) imports ${to} (${pt.group}, a higher layer)` });
      else if (pt.layer === pf.layer) violations.push({ kind: 'sibling', from, to, message: `${from} (${pf.group}) imports ${to} (${pt.group}, a sibling on the same layer)` });
    }
  }
  for (const cycle of cycles(graph)) {
    violations.push({ kind: 'cycle', from: cycle[0]!, to: cycle[cycle.length - 1]!, message: `import cycle: ${[...cycle, cycle[0]].join(' -> ')}` });
  }
  return violations;
}

/** The strongly connected components with more than one file (Tarjan), each as a list of files. */
function cycles(graph: Map<string, string[]>): string[][] {
  let index = 0;
  const idx = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const out: string[][] = [];
  const visit = (v: string): void => {
    idx.set(v, index);
    low.set(v, index);
    index++;
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!graph.has(w)) continue;
      if (!idx.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) {
        low.set(v, Math.min(low.get(v)!, idx.get(w)!));
      }
    }
    if (low.get(v) === idx.get(v)) {
      const scc: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        scc.push(w);
      } while (w !== v);
      if (scc.length > 1) out.push(scc.reverse());
    }
  };
  for (const v of graph.keys()) if (!idx.has(v)) visit(v);
  return out;
}

// `node dist/scripts/layers.js [root]` prints the violations and exits 1 when there are any.
if (process.argv[1] !== undefined && import.meta.url === new URL(`file://${process.argv[1]}`).href) {
  const root = process.argv[2] ?? process.cwd();
  const v = checkLayers(root);
  for (const x of v) process.stdout.write(`${x.kind}: ${x.message}\n`);
  process.stdout.write(`${v.length} violation(s)\n`);
  process.exitCode = v.length === 0 ? 0 : 1;
}
