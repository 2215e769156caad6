import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

// "source" resolves the package's own sub-path imports (`sealwire`, `sealwire/transports/memory`) to the
// TypeScript sources, so tests and examples never run against a stale dist/.
export default defineConfig({
  root: fileURLToPath(new URL("..", import.meta.url)),
  resolve: { conditions: ["source"] },
  ssr: { resolve: { conditions: ["source"] } },
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 30_000,
    hookTimeout: 30_000,
  },
});
