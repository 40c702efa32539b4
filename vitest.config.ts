import { defineConfig } from 'vitest/config';

// Native code runs in forked workers (a crash in one cannot take the runner down); LibTorch already uses
// every core, so test files run one at a time.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    fileParallelism: false,
    execArgv: ['--expose-gc'],
    // the JSON report lets .ci/run print a plain 'N passed, N failed, N skipped' line
    reporters: ['default', ['json', { outputFile: 'build/test-results.json' }]],
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
});
