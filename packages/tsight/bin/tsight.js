#!/usr/bin/env node
// The `tsight` command. Runs the compiled CLI from dist/ (built by `npm install` via the prepare script).
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

const entry = new URL("../dist/cli/main.js", import.meta.url);
if (!existsSync(fileURLToPath(entry))) {
  process.stderr.write("tsight: dist/ is missing; run `npm run build` (npm install does it) first\n");
  process.exit(1);
}
// A reader that stops early (`tsight jobs events ID | head -1`) closes the pipe: the command ends quietly, as Unix
// tools do, rather than with an unhandled EPIPE.
for (const stream of [process.stdout, process.stderr]) {
  stream.on("error", (e) => {
    if (e.code !== "EPIPE") throw e;
    process.exit(process.exitCode ?? 0);
  });
}
const { main } = await import(entry.href);
process.exitCode = await main(process.argv.slice(2));
