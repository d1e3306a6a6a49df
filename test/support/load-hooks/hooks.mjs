// Module resolution hook (see register.mjs): one stderr line per @opentelemetry module resolved.
export async function resolve(specifier, context, next) {
  const resolved = await next(specifier, context);
  if (resolved.url.includes('/@opentelemetry/'))
    process.stderr.write(`esm-loaded ${resolved.url}\n`);
  return resolved;
}
