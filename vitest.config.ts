import { configDefaults, defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // The image test builds and runs the container (root, podman, minutes): `npm run test:image`.
    exclude: [...configDefaults.exclude, 'test/image/**'],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // Integration tests start real servers on random loopback ports; files run in parallel workers.
    pool: 'forks',
  },
});
