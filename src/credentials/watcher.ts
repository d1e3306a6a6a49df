import { type FSWatcher, readFileSync, watch } from 'node:fs';
import { dirname } from 'node:path';
import type { Clock, Timer } from '../clock.js';
import { type Audit, fingerprint } from '../log/audit.js';
import type { Logger } from '../log/logger.js';
import { type ClientCredentials, sameCredentials } from './credentials.js';

/** How long to let a burst of file events settle before re-reading (a `..data` swap is several). */
const SETTLE_MS = 200;

/**
 * Files are also re-read this often, whatever the events say: some volumes never notify (network
 * filesystems, a watcher that failed). 60 s matches the kubelet's own sync period for Secret
 * volumes, and reading two small files a minute costs nothing.
 */
export const POLL_MS = 60_000;

/** What a `CredentialWatcher` watches, how it reads, and whom it tells. */
export interface CredentialWatcherDeps {
  /** The credential files (their directories are watched). */
  files: readonly string[];
  /** The credentials as read at start-up. */
  initial: ClientCredentials;
  /** Reads the credentials again (all files, the environment fallback). */
  read: () => Promise<ClientCredentials>;
  /** Called with credentials that differ from the last ones. */
  onChange: (credentials: ClientCredentials) => void;
  logger: Logger;
  clock: Clock;
  /** How often the files are re-read whatever the events say; `POLL_MS` by default. */
  pollMs?: number;
  /** The audit trail (`credentials_changed` per file); without it one plain log line. */
  audit?: Audit | undefined;
}

/**
 * Watches the directories of the credential files. Kubernetes updates a secret volume by
 * writing a new timestamped directory and atomically renaming the `..data` symlink, so the file
 * paths never change but the directory sees events; watching the directory, not the file,
 * survives the swap. On a change the credentials are re-read and `onChange` is called only when
 * they differ. A read that fails (e.g. mid-swap) keeps the previous credentials.
 */
export class CredentialWatcher {
  readonly #watchers: FSWatcher[] = [];
  readonly #deps: CredentialWatcherDeps;
  readonly #pollMs: number;
  /** The settle timer after file events. */
  #timer: Timer | undefined;
  /** The periodic re-read, re-armed at each tick. */
  #poll: Timer | undefined;
  #current: ClientCredentials;
  #closed = false;
  /** Fingerprint of each file's content as last read, to tell the audit trail which one changed. */
  readonly #prints = new Map<string, string | undefined>();

  constructor(deps: CredentialWatcherDeps) {
    this.#deps = deps;
    this.#pollMs = deps.pollMs ?? POLL_MS;
    this.#current = deps.initial;
    for (const file of deps.files) this.#prints.set(file, filePrint(file));
    this.#armPoll();
    for (const dir of new Set(deps.files.map((f) => dirname(f)))) {
      try {
        const watcher = watch(dir, { persistent: false }, () => this.#schedule());
        watcher.on('error', (err) =>
          deps.logger.warn({ event: 'credentials_watch_error', dir, err }),
        );
        this.#watchers.push(watcher);
      } catch (err) {
        deps.logger.warn({ event: 'credentials_watch_error', dir, err });
      }
    }
  }

  /** The next periodic re-read; the timer does not keep the process alive. */
  #armPoll(): void {
    this.#poll = this.#deps.clock.setTimeout(() => {
      if (this.#closed) return;
      this.#armPoll();
      void this.#reload();
    }, this.#pollMs);
    this.#poll.unref?.();
  }

  #schedule(): void {
    if (this.#closed) return;
    const { clock } = this.#deps;
    if (this.#timer !== undefined) clock.clearTimeout(this.#timer);
    this.#timer = clock.setTimeout(() => void this.#reload(), SETTLE_MS);
  }

  async #reload(): Promise<void> {
    let next: ClientCredentials;
    try {
      next = await this.#deps.read();
    } catch (err) {
      // The message names the file and the error code only (CredentialError never holds content).
      this.#deps.logger.warn({ event: 'credentials_reload_failed', err });
      return;
    }
    if (this.#closed || sameCredentials(this.#current, next)) return;
    this.#current = next;
    this.#record();
    this.#deps.onChange(next);
  }

  /** One `credentials_changed` audit line per file whose content changed (one without files). */
  #record(): void {
    const { audit, files, logger } = this.#deps;
    if (!audit) {
      logger.info({ event: 'credentials_changed' });
      return;
    }
    let changed = 0;
    for (const file of files) {
      const before = this.#prints.get(file);
      const now = filePrint(file);
      this.#prints.set(file, now);
      if (now === before) continue;
      changed += 1;
      audit.credentialsChanged(file, now);
    }
    if (changed === 0) audit.credentialsChanged(undefined, undefined);
  }

  close(): void {
    this.#closed = true;
    const { clock } = this.#deps;
    if (this.#timer !== undefined) clock.clearTimeout(this.#timer);
    if (this.#poll !== undefined) clock.clearTimeout(this.#poll);
    for (const w of this.#watchers) w.close();
  }
}

/** The fingerprint of a file's content, `undefined` when it cannot be read (e.g. mid-swap). */
function filePrint(file: string): string | undefined {
  try {
    return fingerprint(readFileSync(file));
  } catch {
    return undefined;
  }
}
