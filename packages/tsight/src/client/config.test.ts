import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, test } from "vitest";
import type { Backend } from "./backend.js";
import { remoteSettings, resolveRemoteTarget } from "./config.js";
import { HttpBackend } from "./http.js";
import { RemoteConfigError } from "./server-url.js";

const root = mkdtempSync(path.join(os.tmpdir(), "tsight-config-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

let homes = 0;
/** A fresh home directory, with ~/.config/tsight/config.json holding `config` when given. */
function home(config?: unknown): string {
  const dir = path.join(root, `home${homes++}`);
  mkdirSync(path.join(dir, ".config", "tsight"), { recursive: true });
  if (config !== undefined) writeFileSync(path.join(dir, ".config", "tsight", "config.json"), typeof config === "string" ? config : JSON.stringify(config));
  return dir;
}

function file(name: string, content: unknown): string {
  const p = path.join(root, name);
  writeFileSync(p, typeof content === "string" ? content : JSON.stringify(content));
  return p;
}

function configError(fn: () => unknown): RemoteConfigError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(RemoteConfigError);
    return e as RemoteConfigError;
  }
  throw new Error("expected a RemoteConfigError");
}

describe("where the URL comes from", () => {
  test("the backend option first, then TSIGHT_HOST, then the config file", () => {
    const h = home({ host: "https://from-file.example", apiKey: "file-key" });
    const env = { TSIGHT_HOST: "http://from-env:8787", TSIGHT_API_KEY: "env-key" };
    expect(remoteSettings({ backend: "http://explicit:1/" }, { env, home: h })).toEqual({ url: "http://explicit:1", apiKey: "env-key", urlFrom: "backend option", keyFrom: "TSIGHT_API_KEY" });
    expect(remoteSettings({ remote: true }, { env, home: h })).toMatchObject({ url: "http://from-env:8787", urlFrom: "TSIGHT_HOST" });
    const fromFile = remoteSettings({ remote: true }, { env: {}, home: h });
    expect(fromFile).toEqual({
      url: "https://from-file.example",
      apiKey: "file-key",
      urlFrom: path.join(h, ".config", "tsight", "config.json"),
      keyFrom: path.join(h, ".config", "tsight", "config.json"),
    });
  });

  test("TSIGHT_CONFIG names the config file", () => {
    const p = file("named.json", { host: "http://named:9000/prefix/", apiKey: "named-key" });
    expect(remoteSettings({}, { env: { TSIGHT_CONFIG: p }, home: home({ host: "http://ignored" }) })).toMatchObject({ url: "http://named:9000/prefix", apiKey: "named-key", urlFrom: p });
  });

  test("empty variables count as unset", () => {
    const h = home({ host: "http://file-host", apiKey: "k" });
    expect(remoteSettings({}, { env: { TSIGHT_HOST: " ", TSIGHT_API_KEY: "" }, home: h })).toMatchObject({ url: "http://file-host", apiKey: "k" });
  });
});

describe("API keys", () => {
  test("TSIGHT_API_KEY wins over the file", () => {
    expect(remoteSettings({}, { env: { TSIGHT_API_KEY: "env" }, home: home({ host: "http://h", apiKey: "file" }) }).apiKey).toBe("env");
  });

  test("a file without a host lends its key to any server", () => {
    expect(remoteSettings({ backend: "http://anywhere:1" }, { env: {}, home: home({ apiKey: "shared" }) }).apiKey).toBe("shared");
  });

  test("the file's key goes only to the file's host", () => {
    const h = home({ host: "https://mine.example", apiKey: "secret" });
    expect(remoteSettings({ backend: "https://mine.example/" }, { env: {}, home: h }).apiKey).toBe("secret");
    const e = configError(() => remoteSettings({ backend: "https://other.example" }, { env: {}, home: h }));
    expect(e.code).toBe("AUTH");
    expect(e.message).toContain("belongs to https://mine.example");
    expect(e.message).not.toContain("secret");
  });

  test("no key anywhere is an AUTH error saying where to put one", () => {
    const e = configError(() => remoteSettings({ backend: "http://h:1" }, { env: {}, home: home() }));
    expect(e.code).toBe("AUTH");
    expect(e.message).toMatch(/no API key for http:\/\/h:1: set TSIGHT_API_KEY, or "apiKey" in .*config\.json/);
  });
});

describe("errors", () => {
  test("nothing configured says every way to configure it", () => {
    const h = home();
    const e = configError(() => remoteSettings({ remote: true }, { env: {}, home: h }));
    expect(e.code).toBe("VALIDATION");
    expect(e.message).toContain("no remote server is configured");
    expect(e.message).toContain("TSIGHT_HOST");
    expect(e.message).toContain(path.join(h, ".config", "tsight", "config.json"));
  });

  test("a TSIGHT_CONFIG file that is missing, not JSON, or of the wrong shape", () => {
    expect(configError(() => remoteSettings({}, { env: { TSIGHT_CONFIG: path.join(root, "missing.json") }, home: home() })).message).toMatch(/TSIGHT_CONFIG names .*missing\.json, which does not exist/);
    const bad = file("bad.json", "{ host: ");
    expect(configError(() => remoteSettings({}, { env: { TSIGHT_CONFIG: bad }, home: home() })).message).toContain(`cannot read the tsight config file ${bad}`);
    const list = file("list.json", [1]);
    expect(configError(() => remoteSettings({}, { env: { TSIGHT_CONFIG: list }, home: home() })).message).toMatch(/must hold a JSON object/);
    const numeric = file("numeric.json", { host: 8787 });
    expect(configError(() => remoteSettings({}, { env: { TSIGHT_CONFIG: numeric }, home: home() })).message).toMatch(/"host" in .* must be a string/);
  });

  test("URLs must be http(s) without query or credentials", () => {
    const env = { TSIGHT_API_KEY: "k" };
    expect(configError(() => remoteSettings({ backend: "localhost:8787" }, { env, home: home() })).message).toMatch(/must start with http:\/\/ or https:\/\//);
    expect(configError(() => remoteSettings({ backend: "not a url" }, { env, home: home() })).message).toMatch(/not a URL/);
    expect(configError(() => remoteSettings({}, { env: { ...env, TSIGHT_HOST: "https://u:p@h" }, home: home() })).message).toMatch(/^TSIGHT_HOST is .*without a query, fragment or credentials/);
  });

  test("remote: false without a backend is not a remote call", () => {
    expect(configError(() => remoteSettings({ remote: false }, { env: {}, home: home() })).message).toMatch(/not a remote call/);
  });

  test("the file is not read when the call and environment say everything", () => {
    const broken = home("not json");
    expect(remoteSettings({}, { env: { TSIGHT_HOST: "http://h", TSIGHT_API_KEY: "k" }, home: broken }).url).toBe("http://h");
    expect(() => remoteSettings({}, { env: { TSIGHT_HOST: "http://h" }, home: broken })).toThrow(/cannot read the tsight config file/);
  });
});

describe("resolveRemoteTarget", () => {
  test("a URL gives an HttpBackend for it", () => {
    const backend = resolveRemoteTarget({ backend: "http://127.0.0.1:8787/" }, { env: { TSIGHT_API_KEY: "k" }, home: home() });
    expect(backend).toBeInstanceOf(HttpBackend);
    expect((backend as HttpBackend).url).toBe("http://127.0.0.1:8787");
  });

  test("a Backend object is used as it is, with no configuration needed", () => {
    const custom = { submit: async () => undefined, events: async function* () {}, result: async () => undefined } as unknown as Backend;
    expect(resolveRemoteTarget({ backend: custom }, { env: {}, home: home() })).toBe(custom);
    expect(() => resolveRemoteTarget({ backend: {} as Backend }, { env: {}, home: home() })).toThrow(/must be a server URL or a Backend object/);
  });
});
