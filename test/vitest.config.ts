import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

// "source" resolves the package's own sub-path imports (`sealwire`, `sealwire/transports/memory`) to the
// TypeScript sources, so tests and examples never run against a stale dist/.
export default defineConfig({
  root: fileURLToPath(new URL("..", import.meta.url)),
  resolve: { conditions: ["source"] },
  ssr: { resolve: { conditions: ["source"] } },
  test: {
    testTimeout: 30_000,
    hookTimeout: 30_000,
    projects: [
      {
        extends: true,
        test: { name: "main", include: ["test/**/*.test.ts"], exclude: ["test/floods.test.ts"], sequence: { groupOrder: 0 } },
      },
      {
        // The flood test compares latency under attack with a quiet baseline: it runs after everything else, alone,
        // so other test files competing for the two cores do not move its figures. It is still flaky on a 2-core VM
        // (about 1 run in 4: a request timing out under attack, or p99 just over 3×), so it gets two retries; every
        // attempt prints its figures. The flakiness is an open finding (see the closing note), not a tolerance.
        extends: true,
        test: { name: "timing", include: ["test/floods.test.ts"], sequence: { groupOrder: 1 }, retry: 2 },
      },
    ],
  },
});
