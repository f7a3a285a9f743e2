import { fixturesDir } from "../../../../test/fixtures.js";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readSafetensorsHeader } from "../tensor/index.js";
import { embeddedModelNames, embeddedModelPath, packageRoot } from "./embedded.js";
import { ModelConfigError, UnknownModelError } from "./errors.js";
import { locateModel, readModelConfigs, resolveModelSource } from "./source.js";

const FIXTURES = fixturesDir;
const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const offline = { offline: true, cacheDir: "/nonexistent-tsight-cache" };

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), "tsight-src-"));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

describe("embedded models", () => {
  it("are found in the package's models folder", () => {
    expect(packageRoot()).toBe(path.resolve(ROOT));
    for (const name of embeddedModelNames) expect(embeddedModelPath(name)).toBe(path.join(ROOT, "models", name));
  });

  it.each(embeddedModelNames)("%s ships the fixture's files, unchanged", async (name) => {
    const dir = embeddedModelPath(name);
    for (const file of ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]) {
      expect(await readFile(path.join(dir, file), "utf8"), file).toBe(await readFile(path.join(FIXTURES, name, file), "utf8"));
    }
    const header = await readSafetensorsHeader(path.join(dir, "model.safetensors"));
    const fixture = await readSafetensorsHeader(path.join(FIXTURES, name, "model.safetensors"));
    expect(header.byteLength).toBe(fixture.byteLength);
    expect([...header.entries.keys()]).toEqual([...fixture.entries.keys()]);
  });
});

describe("resolveModelSource", () => {
  it("takes an existing folder, relative or absolute", async () => {
    const dir = path.join(FIXTURES, "stdlib-gpt2");
    expect(await locateModel(dir, offline)).toEqual({ kind: "folder", name: dir, path: dir });
    const rel = path.relative(process.cwd(), dir);
    expect(await resolveModelSource(rel, offline)).toBe(dir);
  });

  it("takes an embedded name", async () => {
    expect(await locateModel("stdlib-llama", offline)).toEqual({ kind: "embedded", name: "stdlib-llama", path: path.join(ROOT, "models", "stdlib-llama") });
  });

  it("refuses unknown names, listing the embedded models", async () => {
    const err = await resolveModelSource("stdlib-gpt3", offline).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnknownModelError);
    expect((err as Error).message).toContain("stdlib-gpt2, stdlib-llama");
    expect(err).toMatchObject({ model: "stdlib-gpt3", embedded: embeddedModelNames, code: "VALIDATION", retryable: false });
    await expect(resolveModelSource("./no/such/folder", offline)).rejects.toThrow(/there is no folder at/);
    await expect(resolveModelSource(path.join(FIXTURES, "stdlib-gpt2", "config.json"), offline)).rejects.toThrow(/is a file; give the folder/);
    await expect(resolveModelSource("not a name!", offline)).rejects.toThrow(UnknownModelError);
  });

  it("treats org/name as a hub repo (here: offline, not cached)", async () => {
    await expect(resolveModelSource("someone/some-model", offline)).rejects.toThrow(/offline mode: someone\/some-model has no config.json/);
  });
});

describe("readModelConfigs", () => {
  it("reads config.json and generation_config.json", async () => {
    const { config, generationConfig } = await readModelConfigs(embeddedModelPath("stdlib-gpt2"));
    expect(config.model_type).toBe("gpt2");
    expect(config.n_layer).toBe(4);
    expect(generationConfig?.eos_token_id).toBe(0);
  });

  it("allows a missing generation_config.json and names a missing or broken config.json", async () => {
    const dir = path.join(tmp, "m");
    await mkdir(dir);
    const err = await readModelConfigs(dir).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ModelConfigError);
    expect((err as ModelConfigError).file).toBe(path.join(dir, "config.json"));
    expect((err as Error).message).toMatch(/config.json: missing: a model folder needs config.json/);
    await writeFile(path.join(dir, "config.json"), "{ model_type: gpt2 }");
    await expect(readModelConfigs(dir)).rejects.toThrow(/config.json: is not valid JSON/);
    await writeFile(path.join(dir, "config.json"), "[1]");
    await expect(readModelConfigs(dir)).rejects.toThrow(/config.json: is not a JSON object/);
    await writeFile(path.join(dir, "config.json"), '{"model_type": "llama"}');
    expect(await readModelConfigs(dir)).toEqual({ config: { model_type: "llama" }, generationConfig: null });
    await writeFile(path.join(dir, "generation_config.json"), "nope");
    await expect(readModelConfigs(dir)).rejects.toThrow(/generation_config.json: is not valid JSON/);
  });
});
