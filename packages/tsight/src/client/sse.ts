/**
 * Server-sent events (the `text/event-stream` format of the HTML standard), read from a byte stream. Lines end
 * with LF, CRLF or CR, anywhere across chunk boundaries; `:` starts a comment; an event is dispatched at a blank
 * line and only when it has data; an event cut off by the end of the stream is dropped.
 *
 *   id: 7
 *   event: log
 *   data: {"type":"log",
 *   data:  "text":"hi"}
 *                                  -> { id: "7", event: "log", data: '{"type":"log",\n "text":"hi"}' }
 */

export interface ServerSentEvent {
  /** The last event id the stream set (it carries over to later events that set none); "" if none yet. */
  id: string;
  /** The `event:` field; "message" when absent. */
  event: string;
  /** The `data:` lines joined with "\n". */
  data: string;
  /** The reconnection delay the stream asked for (`retry:`, ms), if it did. */
  retry?: number;
}

/** Incremental parser: push decoded text, get the events it completes. */
export class SseParser {
  private pending = "";
  /** The previous text ended with CR: a leading LF of the next belongs to the same line break. */
  private skipLF = false;
  private started = false;
  private lastId = "";
  private retry: number | undefined;
  private eventType = "";
  private data: string[] = [];

  push(text: string): ServerSentEvent[] {
    if (!this.started && text.length) {
      this.started = true;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    if (this.skipLF && text.startsWith("\n")) text = text.slice(1);
    this.skipLF = false;
    const buffer = this.pending + text;
    const events: ServerSentEvent[] = [];
    let start = 0;
    for (let i = this.pending.length; i < buffer.length; i++) {
      const c = buffer[i];
      if (c !== "\n" && c !== "\r") continue;
      const line = buffer.slice(start, i);
      if (c === "\r") {
        if (i + 1 === buffer.length) this.skipLF = true;
        else if (buffer[i + 1] === "\n") i++;
      }
      start = i + 1;
      const event = this.line(line);
      if (event) events.push(event);
    }
    this.pending = buffer.slice(start);
    return events;
  }

  private line(line: string): ServerSentEvent | null {
    if (line === "") return this.dispatch();
    if (line.startsWith(":")) return null;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    switch (field) {
      case "event":
        this.eventType = value;
        break;
      case "data":
        this.data.push(value);
        break;
      case "id":
        if (!value.includes("\0")) this.lastId = value;
        break;
      case "retry":
        if (/^\d+$/.test(value)) this.retry = Number(value);
        break;
    }
    return null;
  }

  private dispatch(): ServerSentEvent | null {
    const data = this.data;
    const event = this.eventType || "message";
    this.data = [];
    this.eventType = "";
    if (data.length === 0) return null;
    return { id: this.lastId, event, data: data.join("\n"), ...(this.retry !== undefined && { retry: this.retry }) };
  }
}

/** The events of a `text/event-stream` body, as they arrive. Ending the iteration early cancels the stream. */
export async function* parseServerSentEvents(stream: ReadableStream<Uint8Array>): AsyncGenerator<ServerSentEvent> {
  const reader = stream.getReader();
  const decoder = new TextDecoder("utf-8");
  const parser = new SseParser();
  let finished = false;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      yield* parser.push(decoder.decode(value, { stream: true }));
    }
    finished = true;
    yield* parser.push(decoder.decode());
  } finally {
    if (!finished) reader.cancel().catch(() => undefined);
    reader.releaseLock();
  }
}
