/**
 * `npm run build`, second step: bundles what tsc wrote to dist/ into one minified CommonJS file,
 * dist/m2m-proxy.cjs, which the image, the tests and the bench run. One file without comments or
 * whitespace keeps less JavaScript source in V8's heap for the life of the process, and a
 * CommonJS entry does not start Node's ES module loader: ≈ 2 MB less resident memory on Node 24
 * (docs/benchmarks.md, "Memory footprint"). Names are minified too: esbuild's `keepNames`
 * gives every function it creates an own `name` property, closures made per request included
 * (+13 MB with 10,000 requests queued). Stack traces name the minified functions; node's
 * `--enable-source-maps` maps them to src/ through dist/m2m-proxy.cjs.map.
 *
 * Left outside the bundle, loaded from node_modules at run time:
 * - undici and prom-client: src/undici.ts and src/metrics/prom-client.ts load single modules of
 *   them with `createRequire`, which a bundler does not follow;
 * - the packages of features that are loaded only when configured: jose (private_key_jwt),
 *   ioredis (the shared budget) and OpenTelemetry (tracing).
 */
import { build } from 'esbuild';

await build({
  entryPoints: ['dist/main.js'],
  outfile: 'dist/m2m-proxy.cjs',
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20.19',
  minify: true,
  keepNames: false,
  sourcemap: true,
  sourcesContent: false,
  external: ['jose', 'ioredis', '@opentelemetry/*'],
  // `import.meta.url` (createRequire, package.json) is the bundle's own file URL.
  define: { 'import.meta.url': 'importMetaUrl' },
  banner: { js: "const importMetaUrl = require('node:url').pathToFileURL(__filename).href;" },
  logLevel: 'warning',
});
