// Browser end-to-end tests (web/e2e): real jobq-server and worker processes,
// Debian's headless Chromium. Run with `npm run e2e` after `cargo build --bins`.
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    // list-1m.perf.ts only runs when named (npm run perf:list).
    include: process.argv.some((a) => a.includes(".perf.ts")) ? ["e2e/**/*.perf.ts"] : ["e2e/**/*.e2e.ts"],
    environment: "node",
    pool: "forks",
    fileParallelism: false,
    testTimeout: 90_000,
    hookTimeout: 60_000,
    reporters: ["verbose"],
  },
});
