/** JobQueue: the waiting jobs of each served model, first in first out, in memory. Positions count from 0 (next). */
export class JobQueue {
  private readonly lines = new Map<string, string[]>();
  /** job id -> model, for the jobs waiting. */
  private readonly modelOf = new Map<string, string>();

  /** Adds a job at the back of its model's line; returns its position. */
  push(model: string, id: string): number {
    if (this.modelOf.has(id)) throw new Error(`job ${id} is already queued`);
    let line = this.lines.get(model);
    if (!line) this.lines.set(model, (line = []));
    line.push(id);
    this.modelOf.set(id, model);
    return line.length - 1;
  }

  /** Takes the next job of a model. */
  shift(model: string): string | undefined {
    const id = this.lines.get(model)?.shift();
    if (id !== undefined) this.modelOf.delete(id);
    return id;
  }

  /** Takes a job out of its line (cancel); returns its model, or undefined if it was not waiting. */
  remove(id: string): string | undefined {
    const model = this.modelOf.get(id);
    if (model === undefined) return undefined;
    const line = this.lines.get(model)!;
    line.splice(line.indexOf(id), 1);
    this.modelOf.delete(id);
    return model;
  }

  position(id: string): number | undefined {
    const model = this.modelOf.get(id);
    return model === undefined ? undefined : this.lines.get(model)!.indexOf(id);
  }

  length(model: string): number {
    return this.lines.get(model)?.length ?? 0;
  }

  /** The waiting jobs of a model, in order. */
  waiting(model: string): readonly string[] {
    return this.lines.get(model) ?? [];
  }

  /** Every waiting job, of all models. */
  all(): string[] {
    return [...this.modelOf.keys()];
  }
}
