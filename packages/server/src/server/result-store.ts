/**
 * ResultStore: the envelope bytes of completed jobs, one file each under `<dataDir>/results/`. Written to a
 * temporary name and renamed, so a reader never sees half a result. How long a file is kept is the job store's
 * business (the `expires` column); the sweeper deletes it.
 */
import fs from "node:fs";
import fsp from "node:fs/promises";
import path from "node:path";
import { isJobId } from "./ids.js";

export class ResultStore {
  readonly dir: string;

  constructor(dataDir: string) {
    this.dir = path.join(dataDir, "results");
    fs.mkdirSync(this.dir, { recursive: true });
  }

  async write(id: string, bytes: Uint8Array): Promise<void> {
    const file = this.file(id);
    const tmp = `${file}.${process.pid}.tmp`;
    await fsp.writeFile(tmp, bytes);
    await fsp.rename(tmp, file);
  }

  /** The result's bytes, or undefined when there is no such file (never written, or deleted). */
  async read(id: string): Promise<Uint8Array | undefined> {
    try {
      return await fsp.readFile(this.file(id));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw e;
    }
  }

  async remove(id: string): Promise<void> {
    await fsp.rm(this.file(id), { force: true });
  }

  private file(id: string): string {
    if (!isJobId(id)) throw new RangeError(`"${id}" is not a job id`);
    return path.join(this.dir, `${id}.safetensors`);
  }
}
