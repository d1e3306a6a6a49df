import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  type Copy,
  DockerfileParser,
  type Entrypoint,
  type Env,
  type Instruction,
  type JSONInstruction,
  type Label,
} from 'dockerfile-ast';
import { validate } from 'dockerfile-utils';
import { describe, expect, it } from 'vitest';
import { ENTRY } from '../../fixtures/node-flags.js';
import { ROOT } from './renderer.js';

/**
 * There is no container engine on the CI machines, so the Dockerfile is checked by parsing it:
 * the properties that make the image safe and cache-friendly, each stated here.
 */
const text = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
const dockerfile = DockerfileParser.parse(text);
const froms = dockerfile.getFROMs();
const instructions = dockerfile.getInstructions();
/** The instructions of the last stage: what the image runs with. */
const runtime = instructions.filter(
  (i) => i.getRange().start.line >= (froms.at(-1)?.getRange().start.line ?? 0),
);
const build = instructions.filter((i) => !runtime.includes(i));
const keyword = (list: Instruction[], k: string) => list.filter((i) => i.getKeyword() === k);
const args = (i: Instruction) => i.getArguments().map((a) => a.getValue());

describe('Dockerfile', () => {
  it('has no syntax problems', () => {
    expect(validate(text).map((d) => `${d.range.start.line + 1}: ${d.message}`)).toEqual([]);
  });

  it('builds in one stage and runs from another', () => {
    expect(froms.length).toBeGreaterThanOrEqual(2);
    expect(froms[0]?.getBuildStage()).toBe('build');
    const copiesFromBuild = keyword(runtime, 'COPY').filter(
      (c) => (c as Copy).getFromFlag()?.getValue() === 'build',
    );
    expect(copiesFromBuild.length).toBeGreaterThan(0);
  });

  it('pins every base image to a tag that is not latest', () => {
    for (const from of froms) {
      expect(from.getImageTag(), from.getImageName() ?? '').toBeTruthy();
      expect(from.getImageTag()).not.toBe('latest');
    }
  });

  it('builds on Node 24 and runs on a Node 24 base', () => {
    expect(froms[0]?.getImageName()).toBe('node');
    expect(froms[0]?.getImageTag()).toMatch(/^24(\.|-|$)/);
    expect(`${froms.at(-1)?.getImageName()}:${froms.at(-1)?.getImageTag()}`).toMatch(
      /nodejs24|node:24/,
    );
  });

  it('copies the lockfile and installs with it before copying the sources (layer cache)', () => {
    const lines = build.map((i) => `${i.getKeyword()} ${args(i).join(' ')}`);
    const lockfile = lines.findIndex((l) => /^COPY .*package-lock\.json/.test(l));
    const install = lines.findIndex((l) => /^RUN npm ci\b/.test(l));
    const sources = lines.findIndex((l) => /^COPY src\b/.test(l));
    expect(lockfile).toBeGreaterThanOrEqual(0);
    expect(install).toBeGreaterThan(lockfile);
    expect(sources).toBeGreaterThan(install);
    expect(lines.some((l) => /npm (prune|ci) .*--omit=dev/.test(l))).toBe(true);
  });

  it('runs as a numeric non-root user', () => {
    const users = keyword(runtime, 'USER');
    expect(users).toHaveLength(1);
    const [user, group] = (users[0]?.getArgumentsContent() ?? '').split(':');
    expect(user).toMatch(/^\d+$/);
    expect(Number(user)).toBeGreaterThan(0);
    if (group !== undefined) expect(group).toMatch(/^\d+$/);
  });

  it('starts node on the bundle with an exec-form ENTRYPOINT', () => {
    const entrypoints = keyword(runtime, 'ENTRYPOINT') as Entrypoint[];
    expect(entrypoints).toHaveLength(1);
    const json = (entrypoints[0] as JSONInstruction).getJSONStrings().map((s) => s.getJSONValue());
    expect(json.length).toBeGreaterThan(0);
    expect(json[0]).toMatch(/(^|\/)node$/);
    expect(json.at(-1)).toBe(ENTRY);
  });

  it('exposes the proxy and admin ports', () => {
    const ports = keyword(runtime, 'EXPOSE').flatMap(args);
    expect(ports.sort()).toEqual(['8080', '9090']);
  });

  it('sets the default configuration path', () => {
    const env = (keyword(runtime, 'ENV') as Env[]).flatMap((e) => e.getProperties());
    expect(env.find((p) => p.getName() === 'M2M_PROXY_CONFIG')?.getValue()).toBe(
      '/etc/m2m-proxy/m2m-proxy.yaml',
    );
  });

  it('carries the OCI labels, with the Apache-2.0 licence', () => {
    const labels = new Map(
      (keyword(runtime, 'LABEL') as Label[])
        .flatMap((l) => l.getProperties())
        .map((p) => [p.getName(), p.getValue()?.replace(/^"|"$/g, '')]),
    );
    expect(labels.get('org.opencontainers.image.licenses')).toBe('Apache-2.0');
    for (const k of ['title', 'description', 'source']) {
      expect(labels.get(`org.opencontainers.image.${k}`), k).toBeTruthy();
    }
  });

  it('keeps a .dockerignore that leaves out node_modules, dist and .git', () => {
    const ignore = readFileSync(join(ROOT, '.dockerignore'), 'utf8')
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l && !l.startsWith('#'));
    // An allow-list: everything is ignored, then only what the Dockerfile copies is let in.
    expect(ignore[0]).toBe('*');
    for (const p of ignore.slice(1)) expect(p.startsWith('!')).toBe(true);
    for (const copied of ['package.json', 'package-lock.json', 'src/']) {
      expect(ignore).toContain(`!${copied}`);
    }
    expect(ignore.some((l) => /node_modules|dist|\.git/.test(l))).toBe(false);
  });
});
