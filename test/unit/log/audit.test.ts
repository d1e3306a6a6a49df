import { createHash } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { tempDir } from '../../../fixtures/process.js';
import { systemClock } from '../../../src/clock.js';
import { Secret } from '../../../src/credentials/secret.js';
import { CredentialWatcher } from '../../../src/credentials/watcher.js';
import { Audit, clientIdOf, fingerprint } from '../../../src/log/audit.js';
import { SharedBudgetMetrics } from '../../../src/metrics/metrics.js';
import { FallbackSlotStore } from '../../../src/pacing/fallback-slot-store.js';
import type { SharedSlotStore } from '../../../src/pacing/redis-slot-store.js';
import type { SlotStore } from '../../../src/pacing/types.js';
import { logSink } from '../../support/log-sink.js';

const sha12 = (s: string | Buffer) => createHash('sha256').update(s).digest('hex').slice(0, 12);
const parsed = (lines: string[]) => lines.map((l) => JSON.parse(l) as Record<string, unknown>);

async function until(check: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('audit trail', () => {
  it('fingerprints with the first 12 hex digits of SHA-256', () => {
    expect(fingerprint('eyJhbGciOi.payload.sig')).toBe(sha12('eyJhbGciOi.payload.sig'));
    expect(fingerprint('a')).toMatch(/^[0-9a-f]{12}$/);
    expect(fingerprint('a')).not.toBe(fingerprint('b'));
  });

  it('writes audit lines even when log.level silences info, each with audit: true and the route', () => {
    const sink = logSink('warn');
    const audit = new Audit(sink.logger, 'billing');
    const token = 'opaque-token-value-9f8e7d6c5b4a';
    sink.logger.info({ event: 'ordinary' }); // dropped at warn
    audit.tokenIssued({
      clientId: 'app',
      scope: 'read',
      audience: undefined,
      expiresAt: Date.UTC(2030, 0, 1),
      token,
    });
    audit.credentialsChanged('/run/secrets/id', sha12('new'));
    audit.sharedBudgetRestored('m2m:key');
    const lines = parsed(sink.lines);
    expect(lines.map((l) => l.event)).toEqual([
      'token_issued',
      'credentials_changed',
      'shared_budget_restored',
    ]);
    for (const l of lines) expect(l).toMatchObject({ audit: true, route: 'billing' });
    expect(lines[0]).toMatchObject({
      clientId: 'app',
      scope: 'read',
      audience: null,
      expiresAt: '2030-01-01T00:00:00.000Z',
      fingerprint: sha12(token),
    });
    expect(sink.lines.join('\n')).not.toContain(token);
  });

  it('records a token the upstream refused by its fingerprint', () => {
    const sink = logSink('debug');
    const audit = new Audit(sink.logger, 'default');
    audit.tokenRejectedByUpstream('tok-1234567890', 2);
    expect(parsed(sink.lines)[0]).toMatchObject({
      event: 'token_rejected_by_upstream',
      audit: true,
      fingerprint: sha12('tok-1234567890'),
      consecutive: 2,
    });
  });

  it('reads the client id of every credential form', () => {
    const basic = `Basic ${Buffer.from('my-client:s3cr3t').toString('base64')}`;
    expect(clientIdOf({ kind: 'authorization', authorization: new Secret(basic) })).toBe(
      'my-client',
    );
    expect(clientIdOf({ kind: 'secret', clientId: 'other', clientSecret: new Secret('x') })).toBe(
      'other',
    );
  });

  it('records credentials_changed with the file and the fingerprint of its new content', async () => {
    const dir = await tempDir();
    const sink = logSink('info');
    try {
      const idFile = await dir.write('client-id', 'app\n');
      const secretFile = await dir.write('client-secret', 'first-secret-Q1w2e3\n');
      let reads = 0;
      const watcher = new CredentialWatcher({
        files: [idFile, secretFile],
        initial: {
          kind: 'secret',
          clientId: 'app',
          clientSecret: new Secret('first-secret-Q1w2e3'),
        },
        read: async () => {
          reads += 1;
          return {
            kind: 'secret',
            clientId: 'app',
            clientSecret: new Secret(reads > 1 ? 'second-secret-R4t5y6' : 'first-secret-Q1w2e3'),
          };
        },
        onChange: () => undefined,
        logger: sink.logger,
        pollMs: 50,
        audit: new Audit(sink.logger, 'default'),
        clock: systemClock,
      });
      try {
        await writeFile(secretFile, 'second-secret-R4t5y6\n');
        await until(() => sink.lines.some((l) => l.includes('credentials_changed')), 5000);
      } finally {
        watcher.close();
      }
      const changed = parsed(sink.lines).filter((l) => l.event === 'credentials_changed');
      expect(changed).toEqual([
        expect.objectContaining({
          audit: true,
          route: 'default',
          file: secretFile,
          fingerprint: sha12('second-secret-R4t5y6\n'),
        }),
      ]);
      expect(sink.lines.join('\n')).not.toContain('second-secret');
    } finally {
      await dir.remove();
    }
  });

  it('records shared_budget_lost and shared_budget_restored from the fallback store', async () => {
    const sink = logSink('info');
    let healthy = false;
    const shared: SharedSlotStore = {
      reserve: async () => {
        if (!healthy) throw new Error('connection refused');
        return { granted: true, delayMs: 0 };
      },
      ping: async () => {
        if (!healthy) throw new Error('connection refused');
      },
      onConnectionLost: () => undefined,
      heartbeat: async () => 1,
      close: async () => undefined,
    };
    const local: SlotStore = {
      reserve: async () => ({ granted: true, delayMs: 0 }),
      close: async () => undefined,
    };
    const store = new FallbackSlotStore({
      shared,
      localFor: () => local,
      clock: systemClock,
      logger: sink.logger,
      metrics: new SharedBudgetMetrics(new Registry()),
      key: 'm2m:api',
      probeIntervalMs: 20,
      audit: new Audit(sink.logger, 'default'),
    });
    try {
      await until(() => sink.lines.some((l) => l.includes('shared_budget_lost')), 2000);
      healthy = true;
      await until(() => sink.lines.some((l) => l.includes('shared_budget_restored')), 2000);
    } finally {
      await store.close();
    }
    const audit = parsed(sink.lines).filter((l) => l.audit === true);
    expect(audit).toEqual([
      expect.objectContaining({
        event: 'shared_budget_lost',
        route: 'default',
        key: 'm2m:api',
        reason: 'connection refused',
      }),
      expect.objectContaining({
        event: 'shared_budget_restored',
        route: 'default',
        key: 'm2m:api',
      }),
    ]);
  });
});
