// Loaded with `node --require` (NODE_OPTIONS): one stderr line per file of an @opentelemetry
// package the process loads, so a test can tell whether tracing was loaded. The proxy (the
// bundle, a CommonJS file) loads those packages with require(), and every CommonJS file passes
// through the loader of its extension.
const Module = require('node:module');

const loadJs = Module._extensions['.js'];
Module._extensions['.js'] = function reportOtel(module, filename) {
  if (filename.includes('/@opentelemetry/')) process.stderr.write(`otel-loaded ${filename}\n`);
  return loadJs.call(this, module, filename);
};
