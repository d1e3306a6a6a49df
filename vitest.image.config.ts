import { defineConfig } from 'vitest/config';

/** `npm run test:image`: the container image built from the Dockerfile and run (test/image). */
export default defineConfig({
  test: {
    include: ['test/image/**/*.test.ts'],
    testTimeout: 60_000,
    // Building the base-image stand-ins and the image itself happens in beforeAll.
    hookTimeout: 900_000,
    pool: 'forks',
  },
});
