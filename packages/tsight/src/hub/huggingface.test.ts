/**
 * Downloads against a real HTTP server on 127.0.0.1 that answers like the hub's resolve endpoint: X-Repo-Commit
 * and ETag on every file, LFS files as a redirect carrying X-Linked-Etag / X-Linked-Size, X-Error-Code on errors.
 */
import { fixturesDir } from "../../../../test/fixtures.js";
import { createHash } from "node:crypto";
import { mkdtemp, readdir, readFile, readlink, rm, stat } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readModelSafetensors, readSafetensors, writeSafetensors } from "../tensor/index.js";
import { HubAuthError, HubDownloadError, HubNotFoundError, HubOfflineError } from "./errors.js";
import { downloadFile, downloadModel, hubCacheDir, repoCacheFolder, type DownloadProgress, type HubOptions } from "./huggingface.js";
import { resolveModelSource } from "./source.js";

const FIXTURES = fixturesDir;
const COMMIT = "0123456789abcdef0123456789abcdef01234567";
const LFS = new Set(["model.safetensors", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]);

type Repo = Record<string, Uint8Array>;
const repos = new Map<string, Repo>();
const requests: { url: string; auth: string | undefined }[] = [];
/** Files whose body the server cuts off half way (once per entry in the set, until removed). */
const breakMidway = new Set<string>();
/** Files served with a wrong X-Linked-Etag. */
const corrupt = new Set<string>();

const sha = (algo: string, b: Uint8Array | string) => createHash(algo).update(b).digest("hex");
/** Byte equality without a per-element deep compare (slow on big arrays). */
const sameBytes = (a: ArrayBufferView, b: ArrayBufferView) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

function handle(req: http.IncomingMessage, res: http.ServerResponse): void {
  const url = decodeURIComponent(req.url ?? "");
  requests.push({ url, auth: req.headers.authorization });
  const cdn = /^\/cdn\/([^/]+\/[^/]+)\/(.+)$/.exec(url);
  if (cdn) return sendBody(res, repos.get(cdn[1]!)![cdn[2]!]!, cdn[2]!);
  const m = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url);
  const fail = (status: number, code: string, extra: Record<string, string> = {}) => {
    res.writeHead(status, { "x-error-code": code, "x-error-message": `${code} (fake hub)`, ...extra });
    res.end();
  };
  if (!m) return fail(404, "RepoNotFound");
  const [, repoId, revision, file] = m as unknown as [string, string, string, string];
  if (repoId === "tiny/gated") return fail(403, "GatedRepo");
  const repo = repos.get(repoId);
  if (!repo) return fail(401, "RepoNotFound");
  if (revision !== "main" && revision !== COMMIT) return fail(404, "RevisionNotFound");
  const body = repo[file];
  if (!body) return fail(404, "EntryNotFound", { "x-repo-commit": COMMIT });
  if (LFS.has(file)) {
    const linked = corrupt.has(file) ? "f".repeat(64) : sha("sha256", body);
    res.writeHead(302, { location: `${cdnEndpoint}/cdn/${repoId}/${file}`, "x-repo-commit": COMMIT, "x-linked-etag": `"${linked}"`, "x-linked-size": String(body.length), etag: `"${sha("sha1", file)}"` });
    return void res.end();
  }
  res.setHeader("x-repo-commit", COMMIT);
  res.setHeader("etag", `W/"${sha("sha1", body)}"`);
  sendBody(res, body, file);
}

function sendBody(res: http.ServerResponse, body: Uint8Array, file: string): void {
  res.writeHead(200, { "content-length": String(body.length), "content-type": "application/octet-stream" });
  if (breakMidway.has(file)) {
    res.write(body.subarray(0, body.length >> 1), () => res.destroy());
    return;
  }
  res.end(body);
}

let server: http.Server;
let endpoint: string;
/** A second server (another origin) standing in for the CDN that LFS files redirect to. */
let cdn: http.Server;
let cdnEndpoint: string;
let tmp: string;
let cacheDir: string;
let gpt2: Repo;

const read = (f: string) => readFile(path.join(FIXTURES, f)).then((b) => new Uint8Array(b));
const opts = (extra: HubOptions = {}): HubOptions => ({ endpoint, cacheDir, token: "hf_test", offline: false, ...extra });

beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), "tsight-hub-"));
  cacheDir = path.join(tmp, "cache");
  gpt2 = {
    "config.json": await read("hf-fixtures/gpt2/config.json"),
    "generation_config.json": await read("hf-fixtures/gpt2/generation_config.json"),
    "tokenizer.json": await read("stdlib-gpt2/tokenizer.json"),
    "model.safetensors": await read("hf-fixtures/gpt2/model.safetensors"),
  };
  repos.set("tiny/gpt2", gpt2);
  repos.set("tiny/broken", { ...gpt2 });
  repos.set("tiny/corrupt", { ...gpt2 });
  repos.set("tiny/notok", { "config.json": gpt2["config.json"]! });
  repos.set("tiny/noweights", { "config.json": gpt2["config.json"]!, "tokenizer.json": gpt2["tokenizer.json"]! });
  // A sharded copy of the same weights.
  const { tensors } = await readSafetensors(gpt2["model.safetensors"]!);
  const names = [...tensors.keys()];
  const half = names.length >> 1;
  const shard = (list: string[]) => writeSafetensors(new Map(list.map((n) => [n, tensors.get(n)!])), { metadata: { format: "pt" } });
  const weightMap = Object.fromEntries(names.map((n, i) => [n, i < half ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors"]));
  repos.set("tiny/sharded", {
    "config.json": gpt2["config.json"]!,
    "tokenizer.json": gpt2["tokenizer.json"]!,
    "tokenizer_config.json": await read("stdlib-gpt2/tokenizer_config.json"),
    "model.safetensors.index.json": new TextEncoder().encode(JSON.stringify({ metadata: {}, weight_map: weightMap })),
    "model-00001-of-00002.safetensors": shard(names.slice(0, half)),
    "model-00002-of-00002.safetensors": shard(names.slice(half)),
  });
  server = http.createServer(handle);
  await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
  endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  cdn = http.createServer(handle);
  await new Promise<void>((ok) => cdn.listen(0, "127.0.0.1", ok));
  cdnEndpoint = `http://127.0.0.1:${(cdn.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await new Promise((ok) => server.close(ok));
  await new Promise((ok) => cdn.close(ok));
  await rm(tmp, { recursive: true, force: true });
});

const repoDir = (repo: string) => path.join(cacheDir, repoCacheFolder(repo));

describe("downloadModel", () => {
  it("fills the huggingface_hub cache layout", async () => {
    requests.length = 0;
    const progress: DownloadProgress[] = [];
    const snap = await downloadModel("tiny/gpt2", opts({ onProgress: (p) => progress.push(p) }));
    const dir = repoDir("tiny/gpt2");
    expect(snap).toEqual({ repo: "tiny/gpt2", revision: "main", commit: COMMIT, path: path.join(dir, "snapshots", COMMIT), files: ["config.json", "generation_config.json", "tokenizer.json", "model.safetensors"] });
    expect(await readFile(path.join(dir, "refs", "main"), "utf8")).toBe(COMMIT);
    for (const file of snap.files) {
      const link = path.join(snap.path, file);
      const target = await readlink(link);
      const etag = LFS.has(file) ? sha("sha256", gpt2[file]!) : sha("sha1", gpt2[file]!);
      expect(target).toBe(path.join("..", "..", "blobs", etag));
      expect(sameBytes(await readFile(link), gpt2[file]!)).toBe(true);
    }
    expect((await readdir(path.join(dir, "blobs"))).sort()).toHaveLength(4);
    expect(await stat(path.join(dir, ".no_exist", COMMIT, "tokenizer_config.json"))).toBeTruthy();
    // The first file pins the commit; the LFS file comes through the redirect; the token goes to the hub only.
    expect(requests[0]!.url).toBe("/tiny/gpt2/resolve/main/config.json");
    expect(requests.slice(1).every((r) => r.url.includes(COMMIT) || r.url.startsWith("/cdn/"))).toBe(true);
    expect(requests.map((r) => r.url)).toContain("/cdn/tiny/gpt2/model.safetensors");
    expect(requests.every((r) => r.auth === (r.url.startsWith("/cdn/") ? undefined : "Bearer hf_test"))).toBe(true);
    const weights = progress.filter((p) => p.file === "model.safetensors");
    expect(weights[0]).toEqual({ repo: "tiny/gpt2", file: "model.safetensors", bytesDone: 0, bytesTotal: gpt2["model.safetensors"]!.length });
    expect(weights.at(-1)!.bytesDone).toBe(gpt2["model.safetensors"]!.length);
    expect(weights.every((p, i) => i === 0 || p.bytesDone >= weights[i - 1]!.bytesDone)).toBe(true);
  });

  it("loads a cached snapshot again without a request", async () => {
    await downloadModel("tiny/gpt2", opts());
    requests.length = 0;
    const snap = await downloadModel("tiny/gpt2", opts());
    expect(requests).toEqual([]);
    expect(snap.commit).toBe(COMMIT);
    expect(await downloadFile("tiny/gpt2", "config.json", opts())).toBe(path.join(snap.path, "config.json"));
    expect(requests).toEqual([]);
  });

  it("checks the hub again with refresh, without downloading blobs it has", async () => {
    await downloadModel("tiny/gpt2", opts());
    requests.length = 0;
    await downloadModel("tiny/gpt2", opts({ refresh: true }));
    expect(requests.length).toBeGreaterThan(0);
    expect(requests.some((r) => r.url.startsWith("/cdn/"))).toBe(false);
  });

  it("works offline from the cache, and names the repo and file it lacks", async () => {
    await downloadModel("tiny/gpt2", opts());
    requests.length = 0;
    const snap = await downloadModel("tiny/gpt2", opts({ offline: true }));
    expect(snap.files).toContain("model.safetensors");
    const byCommit = await downloadModel("tiny/gpt2", opts({ offline: true, revision: COMMIT }));
    expect(byCommit.path).toBe(snap.path);
    const err = await downloadModel("tiny/sharded", opts({ offline: true })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HubOfflineError);
    expect((err as HubOfflineError).message).toMatch(/tiny\/sharded has no config.json in the cache/);
    const saved = process.env.HF_HUB_OFFLINE;
    process.env.HF_HUB_OFFLINE = "1";
    try {
      await expect(downloadModel("tiny/sharded", { endpoint, cacheDir })).rejects.toThrow(HubOfflineError);
      await expect(downloadModel("tiny/gpt2", { endpoint, cacheDir, revision: "v2" })).rejects.toThrow(/no snapshot for revision "v2"/);
    } finally {
      if (saved === undefined) delete process.env.HF_HUB_OFFLINE;
      else process.env.HF_HUB_OFFLINE = saved;
    }
    expect(requests).toEqual([]);
  });

  it("downloads a sharded checkpoint through its index", async () => {
    const snap = await downloadModel("tiny/sharded", opts());
    expect(snap.files).toEqual(["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]);
    const sharded = (await readModelSafetensors(snap.path)).tensors;
    const single = (await readSafetensors(gpt2["model.safetensors"]!)).tensors;
    expect([...sharded.keys()].sort()).toEqual([...single.keys()].sort());
    for (const [name, t] of single) expect(sameBytes(sharded.get(name)!.data, t.data), name).toBe(true);
    expect(await stat(path.join(repoDir("tiny/sharded"), ".no_exist", COMMIT, "model.safetensors"))).toBeTruthy();
    requests.length = 0;
    await downloadModel("tiny/sharded", opts());
    expect(requests).toEqual([]);
  });

  it("leaves no partial file when a download breaks half way, and succeeds on retry", async () => {
    breakMidway.add("model.safetensors");
    try {
      const err = await downloadModel("tiny/broken", opts()).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(HubDownloadError);
      expect((err as HubDownloadError).retryable).toBe(true);
      expect((err as Error).message).toMatch(/tiny\/broken\/model.safetensors (broke|ended) after \d+ of 566856 bytes/);
    } finally {
      breakMidway.delete("model.safetensors");
    }
    const blobs = await readdir(path.join(repoDir("tiny/broken"), "blobs"));
    expect(blobs.some((b) => b.includes("incomplete") || b === sha("sha256", gpt2["model.safetensors"]!))).toBe(false);
    await expect(stat(path.join(repoDir("tiny/broken"), "snapshots", COMMIT, "model.safetensors"))).rejects.toThrow();
    const snap = await downloadModel("tiny/broken", opts());
    expect(sameBytes(await readFile(path.join(snap.path, "model.safetensors")), gpt2["model.safetensors"]!)).toBe(true);
  });

  it("refuses a body whose sha256 does not match its ETag", async () => {
    corrupt.add("model.safetensors");
    try {
      await expect(downloadModel("tiny/corrupt", opts())).rejects.toThrow(/arrived with sha256 [0-9a-f]{64}, expected f{64}/);
    } finally {
      corrupt.delete("model.safetensors");
    }
  });

  it("gives typed errors for missing repos, files and revisions, gated repos and no server", async () => {
    await expect(downloadModel("tiny/missing", opts())).rejects.toThrow(HubNotFoundError);
    await expect(downloadModel("tiny/missing", opts({ token: false }))).rejects.toThrow(/repo tiny\/missing not found on .* \(if it is private or gated, set HF_TOKEN\)/);
    await expect(downloadModel("tiny/gpt2", opts({ revision: "nope" }))).rejects.toThrow(/tiny\/gpt2 has no revision "nope"/);
    const noTok = await downloadModel("tiny/notok", opts()).catch((e: unknown) => e);
    expect(noTok).toBeInstanceOf(HubNotFoundError);
    expect(noTok).toMatchObject({ repo: "tiny/notok", file: "tokenizer.json" });
    await expect(downloadModel("tiny/noweights", opts())).rejects.toThrow(/has neither model.safetensors nor model.safetensors.index.json/);
    expect((await downloadModel("tiny/noweights", opts({ weights: false }))).files).toEqual(["config.json", "tokenizer.json"]);
    const gated = await downloadModel("tiny/gated", opts()).catch((e: unknown) => e);
    expect(gated).toBeInstanceOf(HubAuthError);
    expect((gated as Error).message).toMatch(/HTTP 403: GatedRepo/);
    await expect(downloadModel("../etc", opts())).rejects.toThrow(/not a Hugging Face repo id/);
    await expect(downloadFile("tiny/gpt2", "../x", opts())).rejects.toThrow(/not a file name/);
    const closed = http.createServer();
    await new Promise<void>((ok) => closed.listen(0, "127.0.0.1", ok));
    const dead = `http://127.0.0.1:${(closed.address() as AddressInfo).port}`;
    await new Promise((ok) => closed.close(ok));
    await expect(downloadModel("tiny/else", opts({ endpoint: dead }))).rejects.toThrow(/cannot reach .* set HF_HUB_OFFLINE=1/);
  });

  it("resolves a repo id as a model source", async () => {
    expect(await resolveModelSource("tiny/gpt2", opts())).toBe(path.join(repoDir("tiny/gpt2"), "snapshots", COMMIT));
  });
});

describe("hubCacheDir", () => {
  it("follows HF_HUB_CACHE, then HF_HOME, then XDG_CACHE_HOME and home", () => {
    expect(hubCacheDir({ HF_HUB_CACHE: "/a", HF_HOME: "/b" })).toBe("/a");
    expect(hubCacheDir({ HF_HOME: "/b" })).toBe(path.join("/b", "hub"));
    expect(hubCacheDir({ XDG_CACHE_HOME: "/c" })).toBe(path.join("/c", "huggingface", "hub"));
    expect(hubCacheDir({})).toBe(path.join(os.homedir(), ".cache", "huggingface", "hub"));
  });
});
