/**
 * ResultStore: the envelope bytes of completed jobs, one file each under `<dataDir>/results/`, sealed with their
 * checksum (result-check.ts) and checked when read. Written to a temporary name and renamed, so a reader never sees
 * half a result; a write that fails (a full disk) leaves nothing behind. How long a file is kept is the job
 * store's business (the `expires` column); the sweeper deletes it.
 */
import fs from "node:fs";
import fsp from "node:fs/promises";
import path from "node:path";
import { isJobId } from "./ids.js";
import { openResult, sealResult } from "./result-check.js";

export class ResultStore {
  readonly dir: string;

  constructor(dataDir: string) {
    this.dir = path.join(dataDir, "results");
    fs.mkdirSync(this.dir, { recursive: true });
  }

  async write(id: string, bytes: Uint8Array): Promise<void> {
    const file = this.file(id);
    const tmp = `${file}.${process.pid}.tmp`;
    try {
      await fsp.writeFile(tmp, sealResult(bytes));
      await fsp.rename(tmp, file);
    } catch (e) {
      await fsp.rm(tmp, { force: true }).catch(() => undefined);
      throw e;
    }
  }

  /** The result's bytes, or undefined when there is no such file (never written, or deleted); damaged: DamagedResultError. */
  async read(id: string): Promise<Uint8Array | undefined> {
    let stored: Uint8Array;
    try {
      stored = await fsp.readFile(this.file(id));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw e;
    }
    return openResult(id, stored);
  }

  /** Deletes temporary files a crash left behind (a write cut short). */
  cleanTemporary(): void {
    for (const name of fs.readdirSync(this.dir)) if (name.endsWith(".tmp")) fs.rmSync(path.join(this.dir, name), { force: true });
  }

  async remove(id: string): Promise<void> {
    await fsp.rm(this.file(id), { force: true });
  }

  private file(id: string): string {
    if (!isJobId(id)) throw new RangeError(`"${id}" is not a job id`);
    return path.join(this.dir, `${id}.safetensors`);
  }
}
