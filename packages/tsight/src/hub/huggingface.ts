/**
 * Hugging Face hub downloads into the cache layout huggingface_hub uses, so Python and tsight share one cache.
 *
 * ```
 * <cache>/models--{org}--{name}/
 *   blobs/<etag>                       file contents, named by ETag (sha256 for LFS files, git blob id otherwise)
 *   snapshots/<commit>/<file>          relative symlinks into blobs/
 *   refs/<revision>                    the commit a branch or tag pointed to when last downloaded
 *   .no_exist/<commit>/<file>          empty markers for optional files the repo lacks
 * ```
 *
 * Files come from `{endpoint}/{repo}/resolve/{revision}/{file}`. The hub answers with `X-Repo-Commit` (the commit
 * the revision resolved to) and `ETag` (or, for LFS files, a redirect carrying `X-Linked-Etag` / `X-Linked-Size`).
 * The first file pins the commit and the rest are asked for by commit, so one download is one consistent snapshot.
 * Bodies go to a temporary file that is renamed into place once complete (and checked against its sha256 where
 * the ETag is one), so an interrupted download never leaves a file that looks whole.
 *
 * A revision already in the cache (refs/<revision> and its files present) is used without asking the hub; pass
 * `refresh: true` to check for a newer commit. Offline (`HF_HUB_OFFLINE=1` or `offline: true`) only the cache is
 * read, and a missing file is a `HubOfflineError` naming the repo and file.
 */
import { lazyNode } from "../tensor/index.js";

const crypto = lazyNode<typeof import("node:crypto")>("node:crypto");
const fsp = lazyNode<typeof import("node:fs/promises")>("node:fs/promises");
const os = lazyNode<typeof import("node:os")>("node:os");
const path = lazyNode<typeof import("node:path")>("node:path");
import { INDEX_FILE, readSafetensorsIndex, SINGLE_FILE } from "../tensor/index.js";
import { HubAuthError, HubDownloadError, HubNotFoundError, HubOfflineError } from "./errors.js";

// #region options

export interface DownloadProgress {
  repo: string;
  file: string;
  bytesDone: number;
  /** null when the server did not say. */
  bytesTotal: number | null;
}

export interface HubOptions {
  /** Branch, tag or commit; default "main". */
  revision?: string;
  /** Default: $HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub or ~/.cache/huggingface/hub. */
  cacheDir?: string;
  /** Default: $HF_ENDPOINT, else https://huggingface.co. */
  endpoint?: string;
  /** Bearer token; default $HF_TOKEN. `false` sends none. */
  token?: string | false;
  /** Use only the cache; default from $HF_HUB_OFFLINE. */
  offline?: boolean;
  /** Ask the hub for the revision's current commit even when the cache has its files. */
  refresh?: boolean;
  /** Download the safetensors weights (default true); false fetches config and tokenizer only. */
  weights?: boolean;
  /** Called as each file's bytes arrive, and once at its end. */
  onProgress?: (progress: DownloadProgress) => void;
  signal?: AbortSignal;
  /** The fetch to use (tests, proxies); default globalThis.fetch. */
  fetch?: typeof globalThis.fetch;
}

/** A downloaded (or cached) snapshot of a repo: a folder that loads like a local model folder. */
export interface HubSnapshot {
  repo: string;
  revision: string;
  commit: string;
  /** snapshots/<commit>, holding the files. */
  path: string;
  /** The files present, relative to `path`. */
  files: string[];
}

interface Settings {
  revision: string;
  cacheDir: string;
  endpoint: string;
  token: string | null;
  offline: boolean;
  refresh: boolean;
  onProgress: ((progress: DownloadProgress) => void) | undefined;
  signal: AbortSignal | undefined;
  fetch: typeof globalThis.fetch;
}

/** Environment variables, as `process.env` holds them (typed without Node's types, for the browser client). */
export type Environment = Readonly<Record<string, string | undefined>>;

/** The huggingface_hub cache folder the environment names. */
export function hubCacheDir(env: Environment = process.env): string {
  if (env.HF_HUB_CACHE) return env.HF_HUB_CACHE;
  if (env.HUGGINGFACE_HUB_CACHE) return env.HUGGINGFACE_HUB_CACHE;
  const home = env.HF_HOME ?? path.join(env.XDG_CACHE_HOME ?? path.join(os.homedir(), ".cache"), "huggingface");
  return path.join(home, "hub");
}

/** Whether the environment asks for offline mode, as huggingface_hub reads HF_HUB_OFFLINE. */
export function hubOfflineFromEnv(env: Environment = process.env): boolean {
  return ["1", "on", "yes", "true"].includes((env.HF_HUB_OFFLINE ?? "").trim().toLowerCase());
}

function settingsFrom(options: HubOptions): Settings {
  const env = process.env;
  const token = options.token === false ? null : (options.token ?? env.HF_TOKEN ?? env.HUGGING_FACE_HUB_TOKEN ?? null);
  return {
    revision: options.revision ?? "main",
    cacheDir: options.cacheDir ?? hubCacheDir(env),
    endpoint: (options.endpoint ?? env.HF_ENDPOINT ?? "https://huggingface.co").replace(/\/+$/, ""),
    token: token || null,
    offline: options.offline ?? hubOfflineFromEnv(env),
    refresh: options.refresh ?? false,
    onProgress: options.onProgress,
    signal: options.signal,
    fetch: options.fetch ?? globalThis.fetch,
  };
}

const REPO_ID = /^[A-Za-z0-9][\w.-]*(\/[A-Za-z0-9][\w.-]*)?$/;

/** Whether `name` is shaped like a Hugging Face repo id ("org/name", or a legacy "name"). */
export function isRepoId(name: string): boolean {
  return REPO_ID.test(name) && !name.includes("..") && !name.includes("--");
}

/** models--{org}--{name}: the repo's folder in the cache. */
export function repoCacheFolder(repo: string): string {
  return `models--${repo.split("/").join("--")}`;
}

// #endregion
// #region downloading a model

/**
 * Downloads what a model needs (config.json, generation_config.json if present, tokenizer.json,
 * tokenizer_config.json if present, and model.safetensors or model.safetensors.index.json with its shards) into the
 * cache, or finds it there, and returns the snapshot folder.
 */
export async function downloadModel(repo: string, options: HubOptions = {}): Promise<HubSnapshot> {
  const repoFiles = new RepoFiles(repo, settingsFrom(options));
  const files: string[] = [];
  const need = async (file: string, optional = false): Promise<string | null> => {
    const p = await repoFiles.get(file, optional);
    if (p) files.push(file);
    return p;
  };
  await need("config.json");
  await need("generation_config.json", true);
  await need("tokenizer.json");
  await need("tokenizer_config.json", true);
  if (options.weights ?? true) {
    if (!(await need(SINGLE_FILE, true))) {
      const index = await need(INDEX_FILE, true);
      if (!index) throw repoFiles.missingWeights();
      const shards = new Set(Object.values((await readSafetensorsIndex(index)).weight_map));
      for (const shard of shards) await need(shard);
    }
  }
  return repoFiles.snapshot(files);
}

/** One file of a repo, downloaded or from the cache; returns its path in the snapshot folder. */
export async function downloadFile(repo: string, file: string, options: HubOptions = {}): Promise<string> {
  return (await new RepoFiles(repo, settingsFrom(options)).get(file, false))!;
}

// #endregion
// #region one repo's files

interface FileMeta {
  commit: string | null;
  etag: string | null;
  size: number | null;
}

/** Fetches files of one repo at one revision, pinning the commit at the first answer. */
class RepoFiles {
  private readonly dir: string;
  /** The commit this download is pinned to, once known. */
  private commit: string | null = null;
  private refWritten = false;

  constructor(
    private readonly repo: string,
    private readonly s: Settings,
  ) {
    if (!isRepoId(repo)) throw new HubNotFoundError(repo, null, `"${repo}" is not a Hugging Face repo id (expected "org/name" of letters, digits, "-", "_" and ".")`);
    if (s.revision.split("/").includes("..") || s.revision === "") throw new HubNotFoundError(repo, null, `"${s.revision}" is not a revision name`);
    this.dir = path.join(s.cacheDir, repoCacheFolder(repo));
  }

  /** The path of `file` in the snapshot; null for an optional file the repo lacks. */
  async get(file: string, optional: boolean): Promise<string | null> {
    checkFileName(this.repo, file);
    const cachedCommit = this.commit ?? (this.s.refresh && !this.s.offline ? null : await this.cachedCommit());
    if (cachedCommit) {
      const p = this.snapshotPath(cachedCommit, file);
      if (await isFile(p)) return this.pin(cachedCommit, p);
      if (optional && (await isFile(path.join(this.dir, ".no_exist", cachedCommit, file)))) return this.pin(cachedCommit, null);
    }
    if (this.s.offline) {
      if (optional) return null;
      throw new HubOfflineError(this.repo, file, this.s.cacheDir, cachedCommit ? `snapshot ${cachedCommit} lacks it` : `no snapshot for revision "${this.s.revision}"`);
    }
    return this.download(file, optional);
  }

  snapshot(files: string[]): HubSnapshot {
    const commit = this.commit!;
    return { repo: this.repo, revision: this.s.revision, commit, path: path.join(this.dir, "snapshots", commit), files };
  }

  missingWeights(): Error {
    if (this.s.offline) return new HubOfflineError(this.repo, SINGLE_FILE, this.s.cacheDir, `nor ${INDEX_FILE}`);
    return new HubNotFoundError(this.repo, SINGLE_FILE, `${this.repo} has neither ${SINGLE_FILE} nor ${INDEX_FILE} at revision "${this.s.revision}" (tsight loads safetensors weights only)`);
  }

  private pin<T>(commit: string, value: T): T {
    this.commit ??= commit;
    return value;
  }

  private async cachedCommit(): Promise<string | null> {
    if (/^[0-9a-f]{40}$/.test(this.s.revision)) return this.s.revision;
    const ref = await fsp.readFile(path.join(this.dir, "refs", this.s.revision), "utf8").catch(() => null);
    return ref?.trim() || null;
  }

  private snapshotPath(commit: string, file: string): string {
    return path.join(this.dir, "snapshots", commit, ...file.split("/"));
  }

  private async download(file: string, optional: boolean): Promise<string | null> {
    const revision = this.commit ?? this.s.revision;
    let url = `${this.s.endpoint}/${this.repo}/resolve/${encodeURIComponent(revision)}/${file.split("/").map(encodeURIComponent).join("/")}`;
    const headers: Record<string, string> = { "accept-encoding": "identity", "user-agent": "tsight" };
    if (this.s.token) headers.authorization = `Bearer ${this.s.token}`;
    let meta: FileMeta | null = null;
    let res: Response;
    // Follow redirects by hand: the metadata is on the hub's own answer, not on the CDN's it may redirect to.
    for (let hops = 0; ; hops++) {
      res = await this.request(url, headers, file);
      if (!meta && res.headers.has("x-repo-commit")) meta = metaOf(res);
      const location = res.headers.get("location");
      if (res.status < 300 || res.status >= 400 || !location) break;
      await res.body?.cancel();
      if (hops === 10) throw new HubDownloadError(this.repo, file, `too many redirects fetching ${file} from ${this.repo}`);
      const next = new URL(location, url);
      if (next.origin !== new URL(url).origin) delete headers.authorization;
      url = next.href;
    }
    if (!res.ok) return this.failed(res, file, optional, revision);
    const final = metaOf(res);
    const commit = meta?.commit ?? final.commit;
    const etag = meta?.etag ?? final.etag;
    const size = meta?.size ?? (res.headers.has("content-encoding") ? null : final.size);
    if (!commit || !etag) {
      await res.body?.cancel();
      throw new HubDownloadError(this.repo, file, `${this.s.endpoint} sent no ${commit ? "ETag" : "X-Repo-Commit"} header for ${this.repo}/${file}: is HF_ENDPOINT a Hugging Face hub?`);
    }
    this.commit ??= commit;
    const blob = path.join(this.dir, "blobs", etag);
    if (await isFile(blob)) {
      await res.body?.cancel();
      const have = (await fsp.stat(blob)).size;
      this.s.onProgress?.({ repo: this.repo, file, bytesDone: have, bytesTotal: have });
    } else {
      await this.saveBody(res, blob, file, size, etag);
    }
    const link = this.snapshotPath(commit, file);
    await linkInto(blob, link);
    await this.writeRef(commit);
    return link;
  }

  private async request(url: string, headers: Record<string, string>, file: string): Promise<Response> {
    try {
      return await this.s.fetch(url, { headers, redirect: "manual", signal: this.s.signal });
    } catch (e) {
      if (this.s.signal?.aborted) throw e;
      throw new HubDownloadError(this.repo, file, `cannot reach ${new URL(url).origin} for ${this.repo}/${file}: ${causeOf(e)}. Without network, set HF_HUB_OFFLINE=1 to use the cache.`, { cause: e });
    }
  }

  /** Turns an error answer into the error it means; null for an optional file the repo lacks. */
  private async failed(res: Response, file: string, optional: boolean, revision: string): Promise<null> {
    await res.body?.cancel();
    const code = res.headers.get("x-error-code");
    const detail = res.headers.get("x-error-message");
    const commit = res.headers.get("x-repo-commit");
    const where = `${this.repo} at revision "${this.s.revision}"`;
    if (code === "EntryNotFound" || (res.status === 404 && !code && commit)) {
      if (commit) {
        this.commit ??= commit;
        await touch(path.join(this.dir, ".no_exist", commit, ...file.split("/")));
        await this.writeRef(commit);
      }
      if (optional) return null;
      throw new HubNotFoundError(this.repo, file, `${where} has no file ${file}`);
    }
    if (code === "RevisionNotFound") throw new HubNotFoundError(this.repo, null, `${this.repo} has no revision "${revision}"`);
    if (code === "RepoNotFound" || res.status === 404) {
      throw new HubNotFoundError(this.repo, null, `repo ${this.repo} not found on ${this.s.endpoint}${this.s.token ? "" : " (if it is private or gated, set HF_TOKEN)"}`);
    }
    if (code === "GatedRepo" || res.status === 401 || res.status === 403) {
      throw new HubAuthError(this.repo, file, `${this.s.endpoint} refused ${this.repo}/${file} (HTTP ${res.status}${detail ? `: ${detail}` : ""}). ${this.s.token ? "Check that HF_TOKEN grants access to this repo." : "Set HF_TOKEN to a token with access."}`);
    }
    throw new HubDownloadError(this.repo, file, `${this.s.endpoint} answered HTTP ${res.status} for ${this.repo}/${file}${detail ? `: ${detail}` : ""}`);
  }

  /** Streams the body to a temporary file, checks length and checksum, then renames it to the blob. */
  private async saveBody(res: Response, blob: string, file: string, size: number | null, etag: string): Promise<void> {
    await fsp.mkdir(path.dirname(blob), { recursive: true });
    const tmp = `${blob}.${process.pid}-${crypto.randomBytes(4).toString("hex")}.incomplete`;
    const hash = /^[0-9a-f]{64}$/.test(etag) ? crypto.createHash("sha256") : null;
    const report = (bytesDone: number) => this.s.onProgress?.({ repo: this.repo, file, bytesDone, bytesTotal: size });
    let done = 0;
    const fh = await fsp.open(tmp, "w");
    try {
      try {
        report(0);
        if (res.body) {
          for await (const chunk of res.body as AsyncIterable<Uint8Array>) {
            await fh.write(chunk);
            hash?.update(chunk);
            done += chunk.length;
            report(done);
          }
        }
      } catch (e) {
        if (this.s.signal?.aborted) throw e;
        throw new HubDownloadError(this.repo, file, `download of ${this.repo}/${file} broke after ${done} of ${size ?? "?"} bytes: ${causeOf(e)}; run again to retry`, { cause: e });
      } finally {
        await fh.close();
      }
      if (size !== null && done !== size) throw new HubDownloadError(this.repo, file, `download of ${this.repo}/${file} ended after ${done} of ${size} bytes; run again to retry`);
      if (hash) {
        const digest = hash.digest("hex");
        if (digest !== etag) throw new HubDownloadError(this.repo, file, `${this.repo}/${file} arrived with sha256 ${digest}, expected ${etag}; run again to retry`);
      }
      await fsp.rename(tmp, blob);
    } catch (e) {
      await fsp.rm(tmp, { force: true });
      throw e;
    }
  }

  private async writeRef(commit: string): Promise<void> {
    if (this.refWritten || this.s.revision === commit) return;
    await writeAtomic(path.join(this.dir, "refs", ...this.s.revision.split("/")), commit);
    this.refWritten = true;
  }
}

function metaOf(res: Response): FileMeta {
  const h = res.headers;
  const num = (v: string | null) => (v !== null && /^\d+$/.test(v) ? Number(v) : null);
  const etag = h.get("x-linked-etag") ?? h.get("etag");
  const size = num(h.get("x-linked-size")) ?? (res.status >= 200 && res.status < 300 ? num(h.get("content-length")) : null);
  return { commit: h.get("x-repo-commit"), etag: etag ? normalizeEtag(etag) : null, size };
}

/** `W/"abc"` → `abc`: the blob name huggingface_hub uses. */
function normalizeEtag(etag: string): string | null {
  const e = etag.replace(/^W\//, "").replace(/^"|"$/g, "");
  return /^[\w.-]+$/.test(e) ? e : null;
}

function checkFileName(repo: string, file: string): void {
  if (file === "" || path.isAbsolute(file) || file.includes("\\") || file.split("/").some((p) => p === "" || p === "." || p === "..")) {
    throw new HubNotFoundError(repo, file, `"${file}" is not a file name inside ${repo}`);
  }
}

function causeOf(e: unknown): string {
  const err = e as Error & { cause?: { message?: string; code?: string } };
  return [err.message, err.cause?.code ?? err.cause?.message].filter(Boolean).join(": ");
}

// #endregion
// #region cache files

async function isFile(p: string): Promise<boolean> {
  return fsp.stat(p).then(
    (s) => s.isFile(),
    () => false,
  );
}

function tempName(p: string): string {
  return `${p}.${process.pid}-${crypto.randomBytes(4).toString("hex")}.tmp`;
}

async function writeAtomic(file: string, text: string): Promise<void> {
  await fsp.mkdir(path.dirname(file), { recursive: true });
  const tmp = tempName(file);
  await fsp.writeFile(tmp, text);
  await fsp.rename(tmp, file);
}

async function touch(file: string): Promise<void> {
  await fsp.mkdir(path.dirname(file), { recursive: true });
  await fsp.writeFile(file, "");
}

/** Points `link` at `blob` with a relative symlink (a copy where symlinks are not allowed), replacing it atomically. */
async function linkInto(blob: string, link: string): Promise<void> {
  await fsp.mkdir(path.dirname(link), { recursive: true });
  const tmp = tempName(link);
  try {
    await fsp.symlink(path.relative(path.dirname(link), blob), tmp);
  } catch {
    await fsp.copyFile(blob, tmp);
  }
  try {
    await fsp.rename(tmp, link);
  } catch (e) {
    await fsp.rm(tmp, { force: true });
    throw e;
  }
}

// #endregion
