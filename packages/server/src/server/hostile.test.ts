/**
 * The hostile suite (hostile.case.ts) against the embedded server run as `tsight serve`, a process of its own, so a
 * crash would show as a changed (or missing) process rather than take the test runner down.
 */
import fs from "node:fs";
import type http from "node:http";
import os from "node:os";
import path from "node:path";
import { startServe, type ServeProcess } from "../../../../test/server/processes.js";
import { sink } from "../../../../test/streams.js";
import { runKeys } from "../cli/serve.js";
import { headers, hostileSuite, limitFlags, loopbackReceiver, type Target } from "./hostile.case.js";

let server: ServeProcess;
let receiver: http.Server;
let dataDir: string;

async function newKey(name: string): Promise<string> {
  const out = sink();
  await runKeys(["create", "--name", name, "--data-dir", dataDir], out);
  return /TSIGHT_API_KEY=(\S+)/.exec(out.text)![1]!;
}

hostileSuite(
  "hostile jobs against the embedded server",
  async (): Promise<Target> => {
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "tsight-hostile-"));
    const hook = await loopbackReceiver();
    receiver = hook.server;
    server = startServe(["--port", "0", "--data-dir", dataDir, ...limitFlags()]);
    const url = (await server.waitFor(/tsight server on (http:\S+),/, 90_000))[1]!;
    const hostile = /TSIGHT_API_KEY=(\S+)/.exec(server.out)![1]!;
    return {
      url,
      keys: { hostile, victim: await newKey("victim"), blocker: await newKey("blocker") },
      processes: () => (server.child.exitCode === null && server.child.signalCode === null ? [server.child.pid!] : []),
      gone: () => `the server ended (code ${server.child.exitCode}, signal ${server.child.signalCode}); it printed last:\n${server.out.slice(-4000)}`,
      forcedEnds: async () => {
        const status = (await (await fetch(`${url}/v1/status`, { headers: headers(hostile) })).json()) as { models: { worker: { forcedEnds: number } }[] };
        return status.models.reduce((n, m) => n + m.worker.forcedEnds, 0);
      },
      receiver: { url: hook.url, hits: hook.hits },
    };
  },
  async () => {
    if (server?.child.exitCode !== null || server?.child.signalCode !== null) console.log("SERVER DIED", server?.child.exitCode, server?.child.signalCode, server?.out.slice(-4000));
    else if (process.env.HOSTILE_DEBUG) console.log("server log:", server?.out.slice(-8000));
    await server?.stop();
    await new Promise<void>((resolve) => receiver?.close(() => resolve()));
    fs.rmSync(dataDir, { recursive: true, force: true });
  },
);
