/**
 * tsight installed as a user installs it: both packages packed (`npm pack`), installed into fresh npm projects in
 * a temporary folder with nothing but the npm registry (the local npm cache first: --prefer-offline), then used
 * from plain JavaScript and from TypeScript, in process and through a server started from the installed
 * @tsight/server. Checks what a user meets: no native compile for `tsight` alone (onnxruntime-node ships its
 * binaries; its postinstall, which only downloads CUDA files, is denied), the install scripts the server package
 * needs (isolated-vm and better-sqlite3 build), stack traces that resolve to shipped source files, declaration
 * maps that lead "go to definition" to them, and `tsight/client` type-checking and bundling for a browser.
 *
 * The server project compiles two native addons from source: this file takes a few minutes on two cores.
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { build } from "esbuild";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const run = promisify(execFile);
const work = fs.mkdtempSync(path.join(os.tmpdir(), "tsight-install-"));
const versionOf = (name: string) => JSON.parse(fs.readFileSync(path.join(root, "node_modules", name, "package.json"), "utf8")).version as string;
const TYPESCRIPT = `typescript@${versionOf("typescript")}`;
const NODE_TYPES = `@types/node@${versionOf("@types/node")}`;

/** The environment of a user's shell: none of the npm_* settings `npm test` passes down (this repository's .npmrc). */
const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^npm_/i.test(k) && k !== "INIT_CWD" && k !== "NODE_OPTIONS"));

/** What the final report says about each package. */
const report: Record<string, { tarball: number; unpacked: number; installSeconds?: number; nodeModules?: number }> = {};
let tarballs: { tsight: string; server: string };

function du(dir: string): number {
  let total = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    if (entry.isDirectory()) total += du(p);
    else if (entry.isFile()) total += fs.statSync(p).size;
  }
  return total;
}

/** Bytes in a project's node_modules, less the tools the test installs beside tsight (TypeScript, Node's types). */
function installedSize(dir: string): number {
  const tools = ["typescript", "@types/node", "undici-types"].map((p) => path.join(dir, "node_modules", p)).filter((p) => fs.existsSync(p));
  return du(path.join(dir, "node_modules")) - tools.reduce((sum, p) => sum + du(p), 0);
}

/** A fresh npm project with `allowScripts` (npm 11's install-script policy) and these packages installed. */
async function project(name: string, allowScripts: Record<string, boolean>, packages: string[]): Promise<{ dir: string; seconds: number; output: string }> {
  const dir = path.join(work, name);
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, "package.json"), JSON.stringify({ name, private: true, type: "module", allowScripts }, null, 2));
  const started = Date.now();
  const { stdout, stderr } = await run("npm", ["install", "--prefer-offline", "--no-audit", "--no-fund", "--foreground-scripts", ...packages], { cwd: dir, env, maxBuffer: 64 * 2 ** 20 });
  return { dir, seconds: (Date.now() - started) / 1000, output: stdout + stderr };
}

async function node(dir: string, args: string[], extraEnv: Record<string, string> = {}): Promise<{ stdout: string; stderr: string; code: number }> {
  return run(process.execPath, args, { cwd: dir, env: { ...env, ...extraEnv }, timeout: 120_000 }).then(
    ({ stdout, stderr }) => ({ stdout, stderr, code: 0 }),
    (e: { stdout?: string; stderr?: string; code?: number }) => ({ stdout: e.stdout ?? "", stderr: e.stderr ?? "", code: e.code ?? -1 }),
  );
}

/** The argmax of the last position's logits, computed by the repository's own build, for comparison. */
const expectedTop = async (prompt: string) => {
  const { LanguageModel } = await import("tsight");
  const lm = await LanguageModel.load("stdlib-gpt2");
  return lm.trace(prompt, async (m) => (await m.lm_head.output).index(0, -1).argmax().item());
};

beforeAll(async () => {
  // --ignore-scripts: the packages are built already (npm test's pretest); prepack would rebuild under other tests.
  const { stdout } = await run("npm", ["pack", "-w", "tsight", "-w", "@tsight/server", "--pack-destination", work, "--ignore-scripts", "--json"], { cwd: root, env, maxBuffer: 64 * 2 ** 20 });
  const packed = JSON.parse(stdout) as { name: string; filename: string; size: number; unpackedSize: number }[];
  for (const p of packed) report[p.name] = { tarball: p.size, unpacked: p.unpackedSize };
  const file = (name: string) => path.join(work, packed.find((p) => p.name === name)!.filename);
  tarballs = { tsight: file("tsight"), server: file("@tsight/server") };
}, 120_000);

afterAll(() => {
  const mb = (n: number | undefined) => (n === undefined ? "?" : `${(n / 2 ** 20).toFixed(1)} MB`);
  for (const [name, r] of Object.entries(report)) {
    console.log(`${name}: tarball ${mb(r.tarball)}, unpacked ${mb(r.unpacked)}; a fresh project installs it in ${r.installSeconds?.toFixed(0) ?? "?"} s, to node_modules of ${mb(r.nodeModules)} (with its dependencies${name === "@tsight/server" ? " and tsight" : ""})`);
  }
  fs.rmSync(work, { recursive: true, force: true });
});

describe("tsight alone, in a fresh project", () => {
  let dir: string;
  beforeAll(async () => {
    const installed = await project("client-app", { "onnxruntime-node": false }, [tarballs.tsight, TYPESCRIPT]);
    dir = installed.dir;
    report.tsight!.installSeconds = installed.seconds;
    report.tsight!.nodeModules = installedSize(dir);
    // Nothing was compiled: the only native code is onnxruntime-node's prebuilt binaries.
    expect(installed.output).not.toMatch(/gyp|prebuild-install|node-pre-gyp/);
  }, 600_000);

  it("installs without compiling anything and without Node's types", () => {
    const built = (function find(d: string): string[] {
      return fs.readdirSync(d, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? (e.name === "build" && fs.existsSync(path.join(d, "binding.gyp")) ? [d] : find(path.join(d, e.name))) : []));
    })(path.join(dir, "node_modules"));
    expect(built).toEqual([]);
    expect(fs.existsSync(path.join(dir, "node_modules/@types/node"))).toBe(false);
    expect(fs.existsSync(path.join(dir, "node_modules/@tsight/server"))).toBe(false);
  });

  it("traces locally from plain JavaScript", async () => {
    fs.writeFileSync(
      path.join(dir, "local.mjs"),
      `import { LanguageModel } from "tsight";
const lm = await LanguageModel.load("stdlib-gpt2");
console.log(await lm.trace("def __init__(self", async (m) => (await m.lm_head.output).index(0, -1).argmax().item()));
`,
    );
    const out = await node(dir, ["local.mjs"]);
    expect(out.stderr).toBe("");
    expect(Number(out.stdout.trim())).toBe(await expectedTop("def __init__(self"));
  });

  it("says what to install for remote: \"local\", without crashing", async () => {
    fs.writeFileSync(
      path.join(dir, "sandbox.mjs"),
      `import { LanguageModel } from "tsight";
const lm = await LanguageModel.load("stdlib-gpt2");
await lm.trace("def f(", async (m) => 1, { remote: "local" }).catch((e) => console.log(e.name + ": " + e.message));
`,
    );
    const out = await node(dir, ["sandbox.mjs"]);
    expect(out.code).toBe(0);
    expect(out.stdout).toMatch(/ClientError: remote: "local" runs the job in the sandbox, which ships in the @tsight\/server package: `npm install @tsight\/server`/);
  });

  it("stack traces resolve to the shipped TypeScript sources (--enable-source-maps)", async () => {
    fs.writeFileSync(path.join(dir, "error.mjs"), `import { tensor } from "tsight";\ntensor([[1, 2, 3]]).matmul(tensor([[1, 2]]));\n`);
    const out = await node(dir, ["--enable-source-maps", "error.mjs"]);
    expect(out.code).not.toBe(0);
    expect(out.stderr).toMatch(/ShapeError: matmul/);
    const frames = [...out.stderr.matchAll(/\((\/[^():]+\.ts):(\d+):(\d+)\)/g)].map((m) => m[1]!);
    expect(frames.length).toBeGreaterThan(2);
    for (const file of frames) {
      expect(file.startsWith(path.join(dir, "node_modules/tsight/src/"))).toBe(true);
      expect(fs.existsSync(file), file).toBe(true);
    }
  });

  it("tsight/client type-checks in a browser project without @types/node, and bundles without Node's modules", async () => {
    fs.writeFileSync(
      path.join(dir, "tsconfig.json"),
      JSON.stringify({
        // skipLibCheck false: tsight's own .d.ts files are checked too, against the DOM's types only.
        compilerOptions: { target: "ES2022", module: "ESNext", moduleResolution: "Bundler", lib: ["ES2022", "DOM", "DOM.Iterable"], types: [], strict: true, noEmit: true, skipLibCheck: false },
        include: ["web.ts"],
      }),
    );
    fs.writeFileSync(
      path.join(dir, "web.ts"),
      `import { HttpBackend, LanguageModel, RemoteJob, tensor, type RemoteOptions } from "tsight/client";

const backend = new HttpBackend({ url: location.origin, apiKey: "tsk_from_the_page" });
const lm = await LanguageModel.fromServer("stdlib-gpt2", { backend });
const options: RemoteOptions = { backend, logs: (line) => console.log(line) };
const top: number = await lm.trace("def f(", async (m) => (await m.transformer.h[-1].output).index(0, -1).argmax().item(), options);
const steer = tensor([1, 2, 3]);
document.title = \`\${top} \${steer.shape}\`;
const job = RemoteJob.attach("job-id", backend);
await job.status();
`,
    );
    const tsc = await node(dir, ["node_modules/typescript/bin/tsc", "-p", "."]);
    expect(tsc.stdout + tsc.stderr).toBe("");
    expect(tsc.code).toBe(0);
    const bundle = await build({ absWorkingDir: dir, entryPoints: ["web.ts"], bundle: true, platform: "browser", format: "esm", write: false, logLevel: "silent", metafile: true });
    const inputs = Object.keys(bundle.metafile.inputs);
    expect(inputs.some((f) => f.startsWith("node_modules/tsight/dist/client/http.js"))).toBe(true);
    expect(inputs.filter((f) => f.startsWith("node:") || f.includes("onnxruntime-node"))).toEqual([]);
  }, 120_000);
});

describe("tsight with @tsight/server, in a fresh TypeScript project", () => {
  let dir: string;
  let serve: ChildProcess | undefined;
  let serverEnv: Record<string, string>;

  beforeAll(async () => {
    // The server package builds isolated-vm and better-sqlite3 from source; onnxruntime-node's download is denied.
    const allow = { "onnxruntime-node": false, "isolated-vm": true, "better-sqlite3": true, "msgpackr-extract": false };
    const installed = await project("server-app", allow, [tarballs.tsight, tarballs.server, TYPESCRIPT, NODE_TYPES]);
    dir = installed.dir;
    report["@tsight/server"]!.installSeconds = installed.seconds;
    report["@tsight/server"]!.nodeModules = installedSize(dir);
    for (const addon of ["isolated-vm/out/isolated_vm.node", "better-sqlite3/build/Release/better_sqlite3.node"]) expect(fs.existsSync(path.join(dir, "node_modules", addon)), addon).toBe(true);

    // `tsight serve` from the installed bin: it loads @tsight/server's CLI.
    serve = spawn(path.join(dir, "node_modules/.bin/tsight"), ["serve", "--port", "0", "--data-dir", path.join(dir, "server-data"), "--model", "stdlib-gpt2"], { cwd: dir, env, stdio: ["ignore", "pipe", "pipe"] });
    let printed = "";
    serverEnv = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`tsight serve did not start:\n${printed}`)), 60_000);
      const read = (d: Buffer) => {
        printed += String(d);
        const host = /TSIGHT_HOST=(\S+)/.exec(printed), key = /TSIGHT_API_KEY=(\S+)/.exec(printed);
        if (host && key && /tsight server on/.test(printed)) {
          clearTimeout(timer);
          resolve({ TSIGHT_HOST: host[1]!, TSIGHT_API_KEY: key[1]! });
        }
      };
      serve!.stdout!.on("data", read);
      serve!.stderr!.on("data", read);
      serve!.once("exit", (code) => reject(new Error(`tsight serve exited (${code}):\n${printed}`)));
    });
  }, 900_000);

  afterAll(() => {
    serve?.kill("SIGTERM");
  });

  it("traces remotely from plain JavaScript, through a server started from the installed package", async () => {
    fs.writeFileSync(
      path.join(dir, "remote.mjs"),
      `import { LanguageModel } from "tsight";
const lm = await LanguageModel.fromServer("stdlib-gpt2");
console.log(await lm.trace("def __init__(self", async (m) => (await m.lm_head.output).index(0, -1).argmax().item(), { remote: true }));
`,
    );
    const out = await node(dir, ["remote.mjs"], serverEnv);
    expect(out.stderr).toBe("");
    expect(Number(out.stdout.trim())).toBe(await expectedTop("def __init__(self"));
  });

  it("ships each package's README, whose TypeScript examples type-check and run as written (locally, and against the server), and the full guide", async () => {
    const examples = (readme: string) => [...fs.readFileSync(path.join(dir, "node_modules", readme), "utf8").matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]!).join("\n");
    const engine = `${examples("tsight/README.md")}\nconsole.log(JSON.stringify({ top, steered, pattern: pattern.shape, text: out.text }));\n`;
    const server = `${examples("@tsight/server/README.md")}\nconsole.log(JSON.stringify({ norm }));\n`;
    fs.mkdirSync(path.join(dir, "readme"), { recursive: true });
    fs.writeFileSync(path.join(dir, "readme/engine.ts"), engine);
    fs.writeFileSync(path.join(dir, "readme/server.ts"), server);
    const flags = ["--target", "ES2022", "--module", "NodeNext", "--moduleResolution", "NodeNext", "--strict", "--skipLibCheck", "--types", "node", "--outDir", "readme/dist"];
    const compile = await node(dir, ["node_modules/typescript/bin/tsc", ...flags, "readme/engine.ts", "readme/server.ts"]);
    expect(compile.stdout + compile.stderr).toBe("");

    const ran = await node(dir, ["readme/dist/engine.js"]);
    expect(ran.stderr).toBe("");
    const got = JSON.parse(ran.stdout) as { top: number; steered: number[]; pattern: number[]; text: string[] };
    expect(got.top).toBe(await expectedTop("def __init__(self"));
    expect(got.steered).toHaveLength(3);
    expect(got.pattern).toEqual([1, 4, 3, 3]);
    expect(got.text).toHaveLength(1);

    // The full guide (the repository's README), which both READMEs point to, is there offline.
    expect(fs.readFileSync(path.join(dir, "node_modules/tsight/GUIDE.md"), "utf8")).toBe(fs.readFileSync(path.join(root, "README.md"), "utf8"));

    const remote = await node(dir, ["readme/dist/server.js"], serverEnv);
    expect(remote.stderr).toBe("");
    const { LanguageModel } = await import("tsight");
    const lm = await LanguageModel.load("stdlib-gpt2");
    const norm = await lm.trace("def f(", async (m) => (await m.transformer.h[-1].output).norm().item());
    expect((JSON.parse(remote.stdout) as { norm: number }).norm).toBeCloseTo(norm, 4);
  }, 120_000);

  it("type-checks a TypeScript program (strict, NodeNext) and runs it compiled: local, remote and remote: \"local\"", async () => {
    fs.writeFileSync(
      path.join(dir, "tsconfig.json"),
      JSON.stringify({
        compilerOptions: { target: "ES2022", module: "NodeNext", moduleResolution: "NodeNext", strict: true, outDir: "dist", sourceMap: true, skipLibCheck: true, types: ["node"] },
        include: ["app.ts"],
      }),
    );
    fs.writeFileSync(
      path.join(dir, "app.ts"),
      `import { LanguageModel, type Tensor } from "tsight";

const prompt = "def __init__(self";
const top = async (lm: LanguageModel, options?: { remote: true | "local" }): Promise<number> =>
  lm.trace(prompt, async (m) => ((await m.lm_head.output) as Tensor).index(0, -1).argmax().item(), options);

const local = await LanguageModel.load("stdlib-gpt2");
const last: Tensor = await local.trace(prompt, async (m) => await m.transformer.h[-1].output);
const meta = await LanguageModel.fromServer("stdlib-gpt2");
console.log(JSON.stringify({ local: await top(local), remote: await top(meta, { remote: true }), sandbox: await top(local, { remote: "local" }), last: last.shape }));
`,
    );
    const check = await node(dir, ["node_modules/typescript/bin/tsc", "-p", ".", "--noEmit"]);
    expect(check.stdout + check.stderr).toBe("");
    const compile = await node(dir, ["node_modules/typescript/bin/tsc", "-p", "."]);
    expect(compile.code).toBe(0);
    const out = await node(dir, ["--enable-source-maps", "dist/app.js"], serverEnv);
    expect(out.stderr).toBe("");
    const want = await expectedTop("def __init__(self");
    expect(JSON.parse(out.stdout)).toEqual({ local: want, remote: want, sandbox: want, last: [1, 5, 256] });
  }, 120_000);

  it('"go to definition" on tsight\'s names leads to its shipped sources (declaration maps), as in an editor', async () => {
    const file = path.join(dir, "app.ts");
    const text = fs.readFileSync(file, "utf8");
    const at = (name: string) => {
      const offset = text.indexOf(name, text.indexOf("const local"));
      const before = text.slice(0, offset).split("\n");
      return { line: before.length, offset: before.at(-1)!.length + 1 };
    };
    const definitions = await tsserver(dir, file, [at("load("), at("trace(")]);
    expect(definitions[0]!.map((d) => path.relative(dir, d.file))).toEqual(["node_modules/tsight/src/client/language-model.ts"]);
    expect(definitions[1]!.map((d) => path.relative(dir, d.file))).toContain("node_modules/tsight/src/client/language-model.ts");
    const source = fs.readFileSync(definitions[0]![0]!.file, "utf8").split("\n");
    expect(source[definitions[0]![0]!.start.line - 1]).toMatch(/static override async load/);
  }, 60_000);
});

/**
 * Asks TypeScript's language server (what editors run) for the definitions at `places` in `file`: it follows
 * declaration maps from .d.ts files to sources, as "go to definition" does.
 */
async function tsserver(dir: string, file: string, places: { line: number; offset: number }[]): Promise<{ file: string; start: { line: number } }[][]> {
  const server = spawn(process.execPath, [path.join(dir, "node_modules/typescript/lib/tsserver.js"), "--disableAutomaticTypingAcquisition"], { cwd: dir, env, stdio: ["pipe", "pipe", "ignore"] });
  const answers = new Map<number, (body: unknown) => void>();
  let buffer = Buffer.alloc(0);
  server.stdout!.on("data", (chunk: Buffer) => {
    buffer = Buffer.concat([buffer, chunk]);
    for (;;) {
      const header = /^Content-Length: (\d+)\r\n\r\n/.exec(buffer.toString("latin1", 0, Math.min(buffer.length, 64)));
      if (!header || buffer.length < header[0].length + Number(header[1])) return;
      const message = JSON.parse(buffer.toString("utf8", header[0].length, header[0].length + Number(header[1])));
      buffer = buffer.subarray(header[0].length + Number(header[1]));
      if (message.type === "response") answers.get(message.request_seq)?.(message.body);
    }
  });
  let seq = 0;
  const ask = (command: string, args: object) =>
    new Promise<unknown>((resolve) => {
      answers.set(++seq, resolve);
      server.stdin!.write(`${JSON.stringify({ seq, type: "request", command, arguments: args })}\n`);
    });
  try {
    server.stdin!.write(`${JSON.stringify({ seq: ++seq, type: "request", command: "open", arguments: { file } })}\n`);
    const out: { file: string; start: { line: number } }[][] = [];
    for (const place of places) out.push((await ask("definition", { file, ...place })) as { file: string; start: { line: number } }[]);
    return out;
  } finally {
    server.kill();
  }
}
