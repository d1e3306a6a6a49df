// Loaded with `node --import` (NODE_OPTIONS): reports on stderr every ES module of an
// @opentelemetry package the process resolves, so a test can tell whether tracing was loaded.
import { register } from 'node:module';

register('./hooks.mjs', import.meta.url);
