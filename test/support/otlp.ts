/**
 * A real OTLP/HTTP trace receiver for integration tests: a `node:http` server on loopback that
 * accepts what the official OpenTelemetry exporter posts to `/v1/traces` (OTLP/JSON, gzip or
 * not), decodes it, and keeps every span and every raw body for assertions and secret scans.
 *
 * @example
 * ```ts
 * const otlp = await startOtlpReceiver();
 * // ... proxy configured with tracing.endpoint = otlp.url ...
 * const server = otlp.spans.find((s) => s.kind === 'server');
 * await otlp.close();
 * ```
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { gunzipSync } from 'node:zlib';
import { listen } from '../../fixtures/process.js';

/** The span kinds of OTLP (`Span.SpanKind`), by name. */
const KINDS = ['unspecified', 'internal', 'server', 'client', 'producer', 'consumer'] as const;
export type SpanKindName = (typeof KINDS)[number];

/** One span as received, ids in hex, times in nanoseconds since the epoch (as bigint). */
export interface ReceivedSpan {
  traceId: string;
  spanId: string;
  /** '' for a root span. */
  parentSpanId: string;
  name: string;
  kind: SpanKindName;
  start: bigint;
  end: bigint;
  attributes: Record<string, string | number | boolean>;
  links: { traceId: string; spanId: string }[];
  /** 0 unset, 1 ok, 2 error. */
  statusCode: number;
  /** `service.name` of the resource the span came with. */
  serviceName: string | undefined;
}

/** A running receiver. */
export interface OtlpReceiver {
  /** `http://127.0.0.1:<port>`: the collector's base URL (the exporter posts to `/v1/traces`). */
  readonly url: string;
  /** Every span received, in arrival order. */
  readonly spans: readonly ReceivedSpan[];
  /** Every request body as decoded text, for secret scans. */
  readonly bodies: readonly string[];
  /** Paths posted to (to check the exporter used `/v1/traces`). */
  readonly paths: readonly string[];
  close(): Promise<void>;
}

type AnyValue = {
  stringValue?: string;
  intValue?: string | number;
  doubleValue?: number;
  boolValue?: boolean;
};
type KeyValue = { key: string; value: AnyValue };
interface JsonSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  startTimeUnixNano: string | number;
  endTimeUnixNano: string | number;
  attributes?: KeyValue[];
  links?: { traceId: string; spanId: string }[];
  status?: { code?: number };
}
interface ExportRequest {
  resourceSpans?: {
    resource?: { attributes?: KeyValue[] };
    scopeSpans?: { spans?: JsonSpan[] }[];
  }[];
}

function value(v: AnyValue): string | number | boolean {
  if (v.stringValue !== undefined) return v.stringValue;
  if (v.intValue !== undefined) return Number(v.intValue);
  if (v.doubleValue !== undefined) return v.doubleValue;
  if (v.boolValue !== undefined) return v.boolValue;
  return '';
}

function attributes(list: KeyValue[] | undefined): Record<string, string | number | boolean> {
  return Object.fromEntries((list ?? []).map((kv) => [kv.key, value(kv.value)]));
}

/** OTLP/JSON ids are hex; a base64 id (protobuf-JSON mapping) is turned into hex too. */
function hex(id: string | undefined): string {
  if (!id) return '';
  return /^[0-9a-f]+$/i.test(id) ? id.toLowerCase() : Buffer.from(id, 'base64').toString('hex');
}

/** Decodes one OTLP/JSON export request into spans. */
export function decodeExport(text: string): ReceivedSpan[] {
  const body = JSON.parse(text) as ExportRequest;
  const out: ReceivedSpan[] = [];
  for (const rs of body.resourceSpans ?? []) {
    const serviceName = attributes(rs.resource?.attributes)['service.name'];
    for (const ss of rs.scopeSpans ?? []) {
      for (const s of ss.spans ?? []) {
        out.push({
          traceId: hex(s.traceId),
          spanId: hex(s.spanId),
          parentSpanId: hex(s.parentSpanId),
          name: s.name,
          kind: KINDS[s.kind] ?? 'unspecified',
          start: BigInt(s.startTimeUnixNano),
          end: BigInt(s.endTimeUnixNano),
          attributes: attributes(s.attributes),
          links: (s.links ?? []).map((l) => ({ traceId: hex(l.traceId), spanId: hex(l.spanId) })),
          statusCode: s.status?.code ?? 0,
          serviceName: typeof serviceName === 'string' ? serviceName : undefined,
        });
      }
    }
  }
  return out;
}

/** Starts a receiver on a free loopback port. Only OTLP/JSON is accepted (415 otherwise). */
export async function startOtlpReceiver(): Promise<OtlpReceiver> {
  const spans: ReceivedSpan[] = [];
  const bodies: string[] = [];
  const paths: string[] = [];
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      paths.push(req.url ?? '');
      let raw = Buffer.concat(chunks);
      if (req.headers['content-encoding'] === 'gzip') raw = gunzipSync(raw);
      if (!String(req.headers['content-type']).startsWith('application/json')) {
        res.writeHead(415).end();
        return;
      }
      const text = raw.toString('utf8');
      bodies.push(text);
      try {
        spans.push(...decodeExport(text));
      } catch {
        res.writeHead(400).end();
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  const port = await listen(server, 0, '127.0.0.1');
  return {
    url: `http://127.0.0.1:${port}`,
    spans,
    bodies,
    paths,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
