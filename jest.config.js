// Jest runs the TypeScript sources as native ESM: Node's own type stripping (test/setup/strip-types.cjs)
// and node --experimental-vm-modules, so ESM-only dependencies such as graphile-worker load.
/** @type {import('jest').Config} */
export default {
  testEnvironment: "node",
  roots: ["<rootDir>/test"],
  testMatch: ["**/*.test.ts"],
  extensionsToTreatAsEsm: [".ts"],
  transform: { "^.+\\.ts$": "<rootDir>/test/setup/strip-types.cjs" },
  globalSetup: "<rootDir>/test/setup/global-setup.mjs",
  globalTeardown: "<rootDir>/test/setup/global-teardown.mjs",
  // Generous: several tests start server processes, and a loaded 2-core machine is slow to.
  testTimeout: 120_000,
  maxWorkers: process.env.JEST_MAX_WORKERS ?? 2,
  verbose: false,
};
