import { defineConfig } from "vitest/config";
import { SERVE_ENV } from "./packages/server/src/cli/serve-env.js";

export default defineConfig({
  // "tsight" and "@tsight/server" resolve to their TypeScript sources (the packages' "tsight-source" export
  // condition), so tests of both packages share one copy of every module.
  resolve: { conditions: ["tsight-source"] },
  ssr: { resolve: { conditions: ["tsight-source"], externalConditions: ["tsight-source"] } },
  test: {
    include: ["packages/*/src/**/*.test.ts", "test/**/*.test.ts"],
    // Native addons (ONNX Runtime) are happiest in child processes; two cores, two workers.
    pool: "forks",
    poolOptions: { forks: { maxForks: 2, minForks: 1, execArgv: ["--conditions=tsight-source"] } },
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Workers start with the environment a server runs in (malloc's settings): the servers tests embed behave, and
    // give memory back, as `tsight serve` does.
    env: { TSIGHT_THREADS: "1", ...SERVE_ENV },
  },
});
