// Preloaded with `node --import` by the CLI tests: records every server.listen() call of the
// process under test on stderr, so a test can tell whether it listened before it failed.
import { Server } from 'node:net';

const listen = Server.prototype.listen;
Server.prototype.listen = function (...args) {
  process.stderr.write(
    `LISTEN-SPY ${JSON.stringify(args.filter((a) => typeof a !== 'function'))}\n`,
  );
  return listen.apply(this, args);
};
