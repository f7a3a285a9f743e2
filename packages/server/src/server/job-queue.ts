/**
 * JobQueue: the waiting jobs of each served model, in memory, served fairly between API keys: each key has its
 * own line, and the model's worker takes the next job from the keys in turn (round robin). A key with one job
 * waits for at most one job of each other key, however many those keys queued. Within a key, first in first out.
 * Positions count from 0 (next) in the order jobs will be served.
 */
interface ModelLine {
  /** Keys with waiting jobs, in turn order; `turn` is the index of the key served next. */
  keys: string[];
  turn: number;
  byKey: Map<string, string[]>;
}

export class JobQueue {
  private readonly lines = new Map<string, ModelLine>();
  /** job id -> its model and key, for the jobs waiting. */
  private readonly where = new Map<string, { model: string; key: string }>();

  /** Adds a job at the back of its key's line (a key new to the model joins the end of the turn); returns its position. */
  push(model: string, id: string, key = ""): number {
    if (this.where.has(id)) throw new Error(`job ${id} is already queued`);
    let line = this.lines.get(model);
    if (!line) this.lines.set(model, (line = { keys: [], turn: 0, byKey: new Map() }));
    let jobs = line.byKey.get(key);
    if (!jobs) {
      line.byKey.set(key, (jobs = []));
      // Just before the key served next: the newcomer comes after every key already waiting.
      line.keys.splice(line.turn, 0, key);
      line.turn = (line.turn + 1) % line.keys.length;
    }
    jobs.push(id);
    this.where.set(id, { model, key });
    return this.position(id)!;
  }

  /** Takes the next job of a model: the first job of the key whose turn it is. */
  shift(model: string): string | undefined {
    const line = this.lines.get(model);
    if (!line || line.keys.length === 0) return undefined;
    const key = line.keys[line.turn]!;
    const id = line.byKey.get(key)!.shift()!;
    this.where.delete(id);
    if (line.byKey.get(key)!.length === 0) this.dropKey(line, line.turn);
    else line.turn = (line.turn + 1) % line.keys.length;
    return id;
  }

  /** Takes a job out of its line (cancel, or joining a batch); returns its model, or undefined if it was not waiting. */
  remove(id: string): string | undefined {
    const at = this.where.get(id);
    if (!at) return undefined;
    const line = this.lines.get(at.model)!;
    const jobs = line.byKey.get(at.key)!;
    jobs.splice(jobs.indexOf(id), 1);
    this.where.delete(id);
    if (jobs.length === 0) this.dropKey(line, line.keys.indexOf(at.key));
    return at.model;
  }

  position(id: string): number | undefined {
    const at = this.where.get(id);
    return at === undefined ? undefined : this.waiting(at.model).indexOf(id);
  }

  length(model: string): number {
    let n = 0;
    for (const jobs of this.lines.get(model)?.byKey.values() ?? []) n += jobs.length;
    return n;
  }

  /** The waiting jobs of a model, in the order they will be served. */
  waiting(model: string): string[] {
    const line = this.lines.get(model);
    if (!line) return [];
    const order: string[] = [];
    const rotation = [...line.keys.slice(line.turn), ...line.keys.slice(0, line.turn)].map((k) => line.byKey.get(k)!);
    for (let round = 0; order.length < this.length(model); round++) for (const jobs of rotation) if (round < jobs.length) order.push(jobs[round]!);
    return order;
  }

  /** Every waiting job, of all models. */
  all(): string[] {
    return [...this.where.keys()];
  }

  private dropKey(line: ModelLine, index: number): void {
    line.byKey.delete(line.keys[index]!);
    line.keys.splice(index, 1);
    if (index < line.turn) line.turn--;
    if (line.turn >= line.keys.length) line.turn = 0;
  }
}
