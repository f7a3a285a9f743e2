/** A writable stream that keeps what is written to it (`.text`) and can wait for a pattern, for commands' output. */
import { Writable } from "node:stream";

export type Sink = Writable & { text: string; waitFor(pattern: RegExp): Promise<RegExpMatchArray> };

export function sink(): Sink {
  const waiting: { pattern: RegExp; resolve: (m: RegExpMatchArray) => void }[] = [];
  const w = new Writable({
    write(chunk, _enc, done) {
      w.text += String(chunk);
      for (const x of [...waiting]) {
        const m = w.text.match(x.pattern);
        if (m) {
          waiting.splice(waiting.indexOf(x), 1);
          x.resolve(m);
        }
      }
      done();
    },
  }) as Sink;
  w.text = "";
  w.waitFor = (pattern) => new Promise((resolve) => waiting.push({ pattern, resolve }));
  return w;
}
