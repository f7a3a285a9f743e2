/** What a bench's child process (a Python reference, a plain-Node row) answers: the JSON on its last line of output. */
export function lastJsonLine<T>(out: string): T {
  return JSON.parse(out.trim().split("\n").at(-1)!) as T;
}
