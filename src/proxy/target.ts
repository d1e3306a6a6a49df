/**
 * Maps a request target onto the upstream (docs/behaviour.md, "Forwarding"): only origin-form targets
 * (`/path?query`) are accepted, and no path segment may climb above the upstream's prefix,
 * whatever encoding hides it.
 */

/** The upstream path for a request target, or `undefined` when it must be refused with 400. */
export function upstreamPath(prefix: string, target: string | undefined): string | undefined {
  // Absolute-form (`http://other/`), authority-form (`host:443`) and asterisk-form (`*`) could
  // select another host or mean nothing to an API: only origin-form passes.
  if (target?.[0] !== '/' || target.startsWith('//')) return undefined;
  const q = target.indexOf('?');
  const path = q === -1 ? target : target.slice(0, q);
  if (climbs(path)) return undefined;
  return prefix + target;
}

/**
 * True when some segment is `.` or `..` once percent-decoded (once: `%252e%252e` stays inside),
 * including `%2e%2e`, also with its path parameters removed (`..;x`), and segments hiding a separator (`..%2f`, `..%5c`, backslashes) that a lenient upstream would split on.
 * A `%` sequence that does not decode is refused too: we cannot tell what the upstream makes of it.
 */
function climbs(path: string): boolean {
  if (!path.includes('.') && !path.includes('%') && !path.includes('\\')) return false; // fast path
  for (const segment of path.split('/')) {
    let decoded: string;
    try {
      decoded = decodeURIComponent(segment);
    } catch {
      return true;
    }
    for (const part of decoded.split(/[/\\]/)) {
      // Servlet containers (Tomcat, Jetty) drop path parameters before resolving dot segments:
      // to them `/..;x/` is `/../`.
      const name = part.split(';', 1)[0];
      if (name === '..' || name === '.') return true;
    }
  }
  return false;
}

/** The upstream URL's path without a trailing slash: `https://api/v1/` → `/v1`, `https://api` → ``. */
export function pathPrefix(upstreamUrl: URL): string {
  return upstreamUrl.pathname.replace(/\/+$/, '');
}
