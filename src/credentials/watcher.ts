import { type FSWatcher, readFileSync, watch } from 'node:fs';
import { dirname } from 'node:path';
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

/**
 * Watches the directories of the credential files. Kubernetes updates a secret volume by
 * writing a new timestamped directory and atomically renaming the `..data` symlink, so the file
 * paths never change but the directory sees events; watching the directory, not the file,
 * survives the swap. On a change the credentials are re-read and `onChange` is called only when
 * they differ. A read that fails (e.g. mid-swap) keeps the previous credentials.
 */
export class CredentialWatcher {
  readonly #watchers: FSWatcher[] = [];
  #timer: NodeJS.Timeout | undefined;
  readonly #poll: NodeJS.Timeout;
  #current: ClientCredentials;
  #closed = false;
  /** Fingerprint of each file's content as last read, to tell the audit trail which one changed. */
  readonly #prints = new Map<string, string | undefined>();

  constructor(
    private readonly files: readonly string[],
    initial: ClientCredentials,
    private readonly read: () => Promise<ClientCredentials>,
    private readonly onChange: (credentials: ClientCredentials) => void,
    private readonly logger: Logger,
    pollMs = POLL_MS,
    private readonly audit?: Audit,
  ) {
    this.#current = initial;
    for (const file of files) this.#prints.set(file, filePrint(file));
    this.#poll = setInterval(() => void this.#reload(), pollMs);
    this.#poll.unref();
    for (const dir of new Set(files.map((f) => dirname(f)))) {
      try {
        const watcher = watch(dir, { persistent: false }, () => this.#schedule());
        watcher.on('error', (err) =>
          this.logger.warn({ event: 'credentials_watch_error', dir, err }),
        );
        this.#watchers.push(watcher);
      } catch (err) {
        this.logger.warn({ event: 'credentials_watch_error', dir, err });
      }
    }
  }

  #schedule(): void {
    if (this.#closed) return;
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => void this.#reload(), SETTLE_MS);
  }

  async #reload(): Promise<void> {
    let next: ClientCredentials;
    try {
      next = await this.read();
    } catch (err) {
      // The message names the file and the error code only (CredentialError never holds content).
      this.logger.warn({ event: 'credentials_reload_failed', err });
      return;
    }
    if (this.#closed || sameCredentials(this.#current, next)) return;
    this.#current = next;
    this.#record();
    this.onChange(next);
  }

  /** One `credentials_changed` audit line per file whose content changed (one without files). */
  #record(): void {
    if (!this.audit) {
      this.logger.info({ event: 'credentials_changed' });
      return;
    }
    let changed = 0;
    for (const file of this.files) {
      const before = this.#prints.get(file);
      const now = filePrint(file);
      this.#prints.set(file, now);
      if (now === before) continue;
      changed += 1;
      this.audit.credentialsChanged(file, now);
    }
    if (changed === 0) this.audit.credentialsChanged(undefined, undefined);
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    clearInterval(this.#poll);
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
