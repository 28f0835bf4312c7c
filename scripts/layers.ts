// The one-way rule of the source tree (docs/architecture.md): every shipped file belongs
// to a layer; a file may import its own group and the groups of lower layers only, and
// groups on the same layer know nothing of each other. Also: no import cycles between
// files (type-only imports included), and shipped code never imports test code.
// Imports are read with TypeScript's own scanner (ts.preProcessFile), from the sources;
// what it cannot see (a module loaded through a computed path, createRequire, a URL
// relative to import.meta.url) is checked here too, with the few legitimate uses listed.
import { existsSync, readFileSync, readdirSync } from 'node:fs';
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
  [{ group: 'oci', paths: ['src/oci/'] }],
  [
    { group: 'cli', paths: ['src/cli/'] },
    { group: 'index', paths: ['src/index.ts'] },
  ],
];

/** Folders whose files are shipped and checked. */
export const SHIPPED_ROOTS = ['src', 'proxies', 'netstack'] as const;

/**
 * Shipped files that load code at run time through a path the scanner cannot follow,
 * and why that is allowed. Anything else of the kind is a violation.
 */
export const RUNTIME_LOADS: Readonly<Record<string, string>> = {
  'src/bench/test-tree.ts': 'bench bodies that drive simulated guests load from test/support/bench/ when a source checkout has it; NOT_SUPPORTED otherwise',
};

/** Where shipped code may point a URL relative to itself besides shipped code: C sources and guest binaries. */
const RUNTIME_FILE_ROOTS = ['native/'] as const;

export interface Violation {
  kind: 'direction' | 'sibling' | 'unassigned' | 'test-import' | 'cycle' | 'unresolved' | 'self-import' | 'runtime-load' | 'unreachable';
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

const SOURCE = /\.(ts|mts|cts|tsx)$/;

function listSources(root: string, dir: string, out: string[]): void {
  for (const e of readdirSync(join(root, dir), { withFileTypes: true })) {
    const rel = `${dir}/${e.name}`;
    if (e.isDirectory()) listSources(root, rel, out);
    else if (SOURCE.test(e.name) && !/\.d\.(ts|mts|cts)$/.test(e.name)) out.push(rel);
  }
}

/** The source file an emitted name stands for (`x.js` → `x.ts`, `x.mjs` → `x.mts`, ...). */
function sourceOf(path: string): string {
  const m = /\.(js|mjs|cjs|jsx)$/.exec(path);
  if (m === null) return path;
  return path.slice(0, -m[0].length) + ({ js: '.ts', mjs: '.mts', cjs: '.cts', jsx: '.tsx' } as const)[m[1] as 'js' | 'mjs' | 'cjs' | 'jsx'];
}

interface FileImports {
  /** Relative imports and triple-slash references, as repo-relative source paths. */
  targets: string[];
  /** Specifiers that name this package from inside it (its name, `#` imports, absolute paths). */
  selfImports: string[];
  /** Run-time loads the scanner cannot follow, described. */
  runtimeLoads: string[];
}

function importsOf(root: string, file: string, packageName: string): FileImports {
  const text = readFileSync(join(root, file), 'utf8');
  const info = ts.preProcessFile(text, true, true);
  const out: FileImports = { targets: [], selfImports: [], runtimeLoads: [] };
  for (const ref of [...info.importedFiles, ...info.referencedFiles]) {
    const spec = ref.fileName;
    if (spec.startsWith('.')) out.targets.push(sourceOf(normalize(join(dirname(file), spec))));
    else if (spec === packageName || spec.startsWith(`${packageName}/`) || spec.startsWith('#') || spec.startsWith('/')) out.selfImports.push(spec);
  }
  // What the scanner cannot see. Comments are blanked first so prose does not count.
  const code = text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[^:])\/\/.*$/gm, '$1');
  for (const m of code.matchAll(/\bimport\(\s*(?!['"][^'"]*['"]\s*\))([^)]{0,60})/g)) out.runtimeLoads.push(`import(${m[1]!.trim()}...) with a computed path`);
  if (/\bcreateRequire\b/.test(code)) out.runtimeLoads.push('createRequire');
  for (const m of code.matchAll(/new URL\(\s*(['"`])([^'"`]*)\1\s*,\s*(?:import\.meta\.url|base)/g)) {
    const spec = m[2]!;
    if (spec.includes('${')) { out.runtimeLoads.push(`new URL(\`${spec}\`) with a computed path`); continue; }
    if (!spec.startsWith('.')) continue;
    // Such a URL is resolved where the module runs: the build (dist/<file's folder>).
    const built = normalize(join('dist', dirname(file), spec));
    const target = built.startsWith('dist/') ? built.slice('dist/'.length) : built;
    if (RUNTIME_FILE_ROOTS.some((r) => target.startsWith(r))) continue;
    if (SHIPPED_ROOTS.some((r) => target.startsWith(`${r}/`))) out.targets.push(sourceOf(target));
    else out.runtimeLoads.push(`new URL('${spec}') outside the shipped folders`);
  }
  return out;
}

/** Every violation of the one-way rule in the tree at `root` (the package root). */
export function checkLayers(root: string): Violation[] {
  const files: string[] = [];
  for (const r of SHIPPED_ROOTS) if (existsSync(join(root, r))) listSources(root, r, files);
  const known = new Set(files);
  const packageName = existsSync(join(root, 'package.json'))
    ? (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { name?: string }).name ?? 'tsibox'
    : 'tsibox';
  const violations: Violation[] = [];
  const graph = new Map<string, string[]>();
  for (const from of files) {
    const pf = placement(from);
    if (pf === null) {
      violations.push({ kind: 'unassigned', from, to: '', message: `${from} belongs to no layer (add it to LAYERS in scripts/layers.ts and docs/architecture.md)` });
      continue;
    }
    const { targets, selfImports, runtimeLoads } = importsOf(root, from, packageName);
    graph.set(from, targets);
    for (const spec of selfImports) {
      violations.push({ kind: 'self-import', from, to: spec, message: `${from} imports '${spec}': inside the package, import files by relative path` });
    }
    if (RUNTIME_LOADS[from] === undefined) {
      for (const what of runtimeLoads) violations.push({ kind: 'runtime-load', from, to: '', message: `${from}: ${what} (the layer check cannot follow it; list it in RUNTIME_LOADS with the reason, or import it)` });
    }
    for (const to of targets) {
      const rel = relative(root, join(root, to));
      if (!SHIPPED_ROOTS.some((r) => rel.startsWith(`${r}/`))) {
        violations.push({ kind: 'test-import', from, to, message: `${from} imports ${to}: shipped code imports only shipped code` });
        continue;
      }
      if (!known.has(to)) {
        violations.push({ kind: 'unresolved', from, to, message: `${from} imports ${to}, which is no source file` });
        continue;
      }
      const pt = placement(to);
      if (pt === null || pt.group === pf.group) continue;
      if (pt.layer > pf.layer) violations.push({ kind: 'direction', from, to, message: `${from} (${pf.group}) imports ${to} (${pt.group}, a higher layer)` });
      else if (pt.layer === pf.layer) violations.push({ kind: 'sibling', from, to, message: `${from} (${pf.group}) imports ${to} (${pt.group}, a sibling on the same layer)` });
    }
  }
  for (const file of unreachable(root, graph)) {
    violations.push({ kind: 'unreachable', from: file, to: '', message: `${file} is shipped but no entry point (package.json main, exports, bin) reaches it: test-only or dead code belongs outside the shipped folders` });
  }
  for (const cycle of cycles(graph)) {
    violations.push({ kind: 'cycle', from: cycle[0]!, to: cycle[cycle.length - 1]!, message: `import cycle: ${[...cycle, cycle[0]].join(' -> ')}` });
  }
  return violations;
}

/** The sources package.json's main, exports and bin scripts load (dist/X.js → X.ts). */
function entryPoints(root: string): string[] {
  const pkgPath = join(root, 'package.json');
  if (!existsSync(pkgPath)) return [];
  const pkg = JSON.parse(readFileSync(pkgPath, 'utf8')) as { main?: string; exports?: unknown; bin?: string | Record<string, string> };
  const built: string[] = [];
  if (pkg.main !== undefined) built.push(pkg.main);
  const walk = (v: unknown): void => {
    if (typeof v === 'string') built.push(v);
    else if (v !== null && typeof v === 'object') for (const x of Object.values(v)) walk(x);
  };
  walk(pkg.exports);
  const bins = typeof pkg.bin === 'string' ? [pkg.bin] : Object.values(pkg.bin ?? {});
  for (const b of bins) {
    const text = existsSync(join(root, b)) ? readFileSync(join(root, b), 'utf8') : '';
    for (const ref of ts.preProcessFile(text, true, true).importedFiles) built.push(normalize(join(dirname(b), ref.fileName)));
  }
  return built
    .map((p) => normalize(p))
    .filter((p) => p.startsWith('dist/') && !p.endsWith('.d.ts'))
    .map((p) => sourceOf(p.slice('dist/'.length)));
}

/** Shipped files that no entry point reaches through the import graph. */
function unreachable(root: string, graph: Map<string, string[]>): string[] {
  const entries = entryPoints(root).filter((e) => graph.has(e));
  if (entries.length === 0) return [];
  const seen = new Set<string>(entries);
  const todo = [...entries];
  while (todo.length > 0) {
    for (const next of graph.get(todo.pop()!) ?? []) {
      if (!seen.has(next) && graph.has(next)) {
        seen.add(next);
        todo.push(next);
      }
    }
  }
  return [...graph.keys()].filter((f) => !seen.has(f)).sort();
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
