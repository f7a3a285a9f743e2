/** Runs the `tsight` command from source (tests spawn it as a process: `node <tsx cli> test/server/cli-entry.ts serve ...`). */
import { main } from "../../packages/tsight/src/cli/main.js";

process.exitCode = await main(process.argv.slice(2));
