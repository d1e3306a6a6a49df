import pino, { type DestinationStream, type Logger, type LoggerOptions } from 'pino';

export type { Logger };

/**
 * Paths pino censors whatever a caller passes in. The code never hands a secret to the logger;
 * this list is the second line of defence (docs/behaviour.md, "Logs").
 */
const REDACT_PATHS = [
  'authorization',
  'headers.authorization',
  'headers["proxy-authorization"]',
  'headers.cookie',
  'req.headers.authorization',
  'req.headers["proxy-authorization"]',
  'req.headers.cookie',
  'res.headers["set-cookie"]',
  '*.authorization',
  '*["proxy-authorization"]',
  '*.cookie',
  'access_token',
  '*.access_token',
  'token',
  'clientSecret',
  '*.clientSecret',
  'client_secret',
  'password',
  '*.password',
  'privateKey',
  'assertion',
];

/** Creates the process logger: pino JSON lines, redacted, to `destination` (stdout by default). */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  const options: LoggerOptions = {
    level,
    base: { name: 'm2m-proxy' },
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  return destination ? pino(options, destination) : pino(options);
}
