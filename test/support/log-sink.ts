import { createLogger, type Logger } from '../../src/log/logger.js';

/** A real pino logger whose JSON lines are kept for assertions (as pino's own tests do). */
export function logSink(level = 'debug'): {
  logger: Logger;
  lines: string[];
  events: () => unknown[];
} {
  const lines: string[] = [];
  const logger = createLogger(level, {
    write: (line: string) => {
      lines.push(line);
    },
  });
  const events = () =>
    lines.map((line) => (JSON.parse(line) as { event?: unknown }).event).filter(Boolean);
  return { logger, lines, events };
}
