import { describe, expect, test } from "vitest";
import { parseServerSentEvents, SseParser, type ServerSentEvent } from "./sse.js";

const bytes = (s: string) => new TextEncoder().encode(s);

/** A byte stream delivering `chunks` one by one. */
function streamOf(chunks: Uint8Array[], onCancel?: () => void): ReadableStream<Uint8Array> {
  let i = 0;
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      if (i < chunks.length) controller.enqueue(chunks[i++]!);
      else controller.close();
    },
    cancel: onCancel,
  });
}

async function collect(stream: ReadableStream<Uint8Array>): Promise<ServerSentEvent[]> {
  const out: ServerSentEvent[] = [];
  for await (const e of parseServerSentEvents(stream)) out.push(e);
  return out;
}

/** `text` cut into pieces at the given byte offsets. */
function cut(text: string, at: number[]): Uint8Array[] {
  const all = bytes(text);
  const points = [0, ...at, all.length];
  return points.slice(1).map((end, i) => all.slice(points[i], end));
}

const sample = 'id: 1\nevent: status\ndata: {"type":"status","status":"QUEUED","position":2}\n\n: keep-alive\n\nid: 2\ndata: {"type":"log",\ndata:  "text":"héllo ✓"}\n\n';
const expected: ServerSentEvent[] = [
  { id: "1", event: "status", data: '{"type":"status","status":"QUEUED","position":2}' },
  { id: "2", event: "message", data: '{"type":"log",\n "text":"héllo ✓"}' },
];

describe("server-sent events", () => {
  test("a whole stream in one chunk", async () => {
    expect(await collect(streamOf([bytes(sample)]))).toEqual(expected);
  });

  test("split at every byte: same events (multi-byte characters cut in half too)", async () => {
    const all = bytes(sample);
    expect(await collect(streamOf([...all].map((b) => Uint8Array.of(b))))).toEqual(expected);
  });

  test("split at every possible point into two and three chunks", async () => {
    const n = bytes(sample).length;
    for (let a = 1; a < n; a++) expect(await collect(streamOf(cut(sample, [a])))).toEqual(expected);
    for (let a = 1; a < n; a += 7) for (let b = a + 1; b < n; b += 5) expect(await collect(streamOf(cut(sample, [a, b])))).toEqual(expected);
  });

  test("CRLF and lone CR line ends, including CR at the end of a chunk and LF at the start of the next", async () => {
    const crlf = sample.replace(/\n/g, "\r\n");
    const cr = sample.replace(/\n/g, "\r");
    expect(await collect(streamOf([bytes(crlf)]))).toEqual(expected);
    expect(await collect(streamOf([bytes(cr)]))).toEqual(expected);
    const n = bytes(crlf).length;
    for (let a = 1; a < n; a++) expect(await collect(streamOf(cut(crlf, [a])))).toEqual(expected);
    // "data: x\r" | "\n\r\n": one line break, then the blank line.
    expect(await collect(streamOf([bytes("data: x\r"), bytes("\n\r\n")]))).toEqual([{ id: "", event: "message", data: "x" }]);
  });

  test("comments, unknown fields, a field without a colon, and no space after the colon", async () => {
    const text = ": comment\nfoo: bar\ndata\ndata:tight\n\n";
    expect(await collect(streamOf([bytes(text)]))).toEqual([{ id: "", event: "message", data: "\ntight" }]);
  });

  test("the id carries over to later events; retry is reported; an event without data is not dispatched", async () => {
    const text = "id: 5\nretry: 1500\ndata: a\n\nevent: ping\n\ndata: b\n\nid: 6\nretry: x\ndata: c\n\n";
    expect(await collect(streamOf([bytes(text)]))).toEqual([
      { id: "5", event: "message", data: "a", retry: 1500 },
      { id: "5", event: "message", data: "b", retry: 1500 },
      { id: "6", event: "message", data: "c", retry: 1500 },
    ]);
  });

  test("a leading byte-order mark is skipped; an event cut off by the end of the stream is dropped", async () => {
    expect(await collect(streamOf([Uint8Array.of(0xef, 0xbb), Uint8Array.of(0xbf), bytes("data: 1\n\ndata: 2\n")]))).toEqual([{ id: "", event: "message", data: "1" }]);
    expect(await collect(streamOf([bytes("id: 3\ndata: partial")]))).toEqual([]);
  });

  test("leaving the loop early cancels the stream", async () => {
    let cancelled = false;
    const stream = streamOf([bytes("data: 1\n\n"), bytes("data: 2\n\n"), bytes("data: 3\n\n")], () => (cancelled = true));
    for await (const e of parseServerSentEvents(stream)) {
      expect(e.data).toBe("1");
      break;
    }
    expect(cancelled).toBe(true);
  });

  test("the parser alone: push text, get completed events", () => {
    const p = new SseParser();
    expect(p.push("data: one")).toEqual([]);
    expect(p.push("\n")).toEqual([]);
    expect(p.push("\ndata: two\n\ndata: thr")).toEqual([
      { id: "", event: "message", data: "one" },
      { id: "", event: "message", data: "two" },
    ]);
    expect(p.push("ee\n\n")).toEqual([{ id: "", event: "message", data: "three" }]);
  });
});
