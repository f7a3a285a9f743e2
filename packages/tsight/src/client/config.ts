/**
 * Where remote jobs go. The server's URL comes from, in order: the call's `backend` option, the environment
 * variable TSIGHT_HOST, the config file. The API key from TSIGHT_API_KEY, else the config file. The config file is
 * $TSIGHT_CONFIG, else ~/.config/tsight/config.json:
 *
 *   { "host": "https://tsight.example.org", "apiKey": "tsk_..." }
 *
 * The file's key goes only to the file's host (or anywhere, when the file names no host), so a `backend` URL for
 * another server never receives it.
 *
 * Reads the environment and the file system: Node only, unlike the rest of the client.
 */
import { lazyNode } from "../tensor/index.js";

const fs = lazyNode<typeof import("node:fs")>("node:fs");
const os = lazyNode<typeof import("node:os")>("node:os");
const path = lazyNode<typeof import("node:path")>("node:path");
import { isBackend, type Backend } from "./backend.js";
import { HttpBackend } from "./http.js";
import { normalizeServerUrl as normalizeUrl, RemoteConfigError } from "./server-url.js";

export interface RemoteTargetOptions {
  /** A server URL or a Backend object; wins over the environment and the config file. */
  backend?: string | Backend;
  /** `true`: the configured default server. `false` without `backend` is not a remote call. */
  remote?: boolean;
}

/** Where settings are read; tests give their own. */
export interface ConfigSources {
  env?: Readonly<Record<string, string | undefined>>;
  /** The home directory (for ~/.config/tsight/config.json). */
  home?: string;
}

/** What the config file may hold. */
export interface RemoteConfigFile {
  host?: string;
  apiKey?: string;
}

export interface RemoteSettings {
  /** The server's base URL, without a trailing slash. */
  url: string;
  apiKey: string;
  /** Where the URL came from: "backend option", "TSIGHT_HOST", or the config file's path. */
  urlFrom: string;
  /** Where the key came from: "TSIGHT_API_KEY" or the config file's path. */
  keyFrom: string;
}

/** The Backend a remote call uses: the `backend` object itself, or an HttpBackend for the configured server. */
export function resolveRemoteTarget(options: RemoteTargetOptions = {}, sources: ConfigSources = {}): Backend {
  if (options.backend !== undefined && typeof options.backend !== "string") {
    if (!isBackend(options.backend)) throw new RemoteConfigError("the backend option must be a server URL or a Backend object (such as an HttpBackend)");
    return options.backend;
  }
  const { url, apiKey } = remoteSettings(options, sources);
  return new HttpBackend({ url, apiKey });
}

/** The server URL and API key a remote call with these options uses. */
export function remoteSettings(options: RemoteTargetOptions = {}, sources: ConfigSources = {}): RemoteSettings {
  if (options.backend === undefined && options.remote === false) throw new RemoteConfigError("not a remote call: pass { remote: true } or a backend");
  const env = sources.env ?? process.env;
  // The file is read only when the call and the environment leave something to it.
  const needsFile = (typeof options.backend !== "string" && !nonEmpty(env.TSIGHT_HOST)) || !nonEmpty(env.TSIGHT_API_KEY);
  const file = needsFile ? configFile(env, sources.home ?? os.homedir()) : { path: "", explicit: false, exists: false };
  const config = file.exists ? readRemoteConfig(file.path) : {};

  let url: string, urlFrom: string;
  if (typeof options.backend === "string") [url, urlFrom] = [normalizeUrl(options.backend, "the backend option"), "backend option"];
  else if (nonEmpty(env.TSIGHT_HOST)) [url, urlFrom] = [normalizeUrl(env.TSIGHT_HOST!, "TSIGHT_HOST"), "TSIGHT_HOST"];
  else if (config.host) [url, urlFrom] = [normalizeUrl(config.host, `"host" in ${file.path}`), file.path];
  else {
    throw new RemoteConfigError(
      `no remote server is configured: pass { backend: "https://host:port" }, set TSIGHT_HOST, or write { "host": "https://host:port", "apiKey": "..." } to ${file.path}` +
        (file.explicit ? " (named by TSIGHT_CONFIG)" : ""),
    );
  }

  if (nonEmpty(env.TSIGHT_API_KEY)) return { url, apiKey: env.TSIGHT_API_KEY!, urlFrom, keyFrom: "TSIGHT_API_KEY" };
  if (config.apiKey) {
    const keyHost = config.host ? normalizeUrl(config.host, `"host" in ${file.path}`) : null;
    if (keyHost === null || new URL(keyHost).origin === new URL(url).origin) return { url, apiKey: config.apiKey, urlFrom, keyFrom: file.path };
    throw new RemoteConfigError(`no API key for ${url}: the key in ${file.path} belongs to ${keyHost}; set TSIGHT_API_KEY for this server`, "AUTH");
  }
  throw new RemoteConfigError(`no API key for ${url}: set TSIGHT_API_KEY, or "apiKey" in ${file.path}`, "AUTH");
}

/** Which config file applies, and whether the user named it. */
export function configFile(env: Readonly<Record<string, string | undefined>>, home: string): { path: string; explicit: boolean; exists: boolean } {
  if (nonEmpty(env.TSIGHT_CONFIG)) {
    const file = path.resolve(env.TSIGHT_CONFIG!);
    if (!fs.existsSync(file)) throw new RemoteConfigError(`TSIGHT_CONFIG names ${file}, which does not exist`);
    return { path: file, explicit: true, exists: true };
  }
  const file = path.join(home, ".config", "tsight", "config.json");
  return { path: file, explicit: false, exists: fs.existsSync(file) };
}

/** The config file's settings, checked. */
export function readRemoteConfig(file: string): RemoteConfigFile {
  let data: unknown;
  try {
    data = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (e) {
    throw new RemoteConfigError(`cannot read the tsight config file ${file}: ${(e as Error).message}`);
  }
  if (typeof data !== "object" || data === null || Array.isArray(data)) throw new RemoteConfigError(`the tsight config file ${file} must hold a JSON object like { "host": "...", "apiKey": "..." }`);
  const { host, apiKey } = data as Record<string, unknown>;
  for (const [name, value] of [["host", host], ["apiKey", apiKey]] as const) {
    if (value !== undefined && value !== null && typeof value !== "string") throw new RemoteConfigError(`"${name}" in ${file} must be a string`);
  }
  return { host: nonEmpty(host) ? host : undefined, apiKey: nonEmpty(apiKey) ? apiKey : undefined };
}

const nonEmpty = (s: unknown): s is string => typeof s === "string" && s.trim() !== "";
