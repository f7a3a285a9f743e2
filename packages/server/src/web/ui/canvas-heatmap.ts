/**
 * Heatmaps painted on a canvas, for grids too large for an element per cell: a 512-token attention pattern is
 * 262,144 cells, and as elements (Heatmap) it froze chromium for seconds. CanvasHeatmap is the large view: labels
 * on both axes where they are legible, and a readout of the cell under the pointer or the keyboard cursor (arrow
 * keys, Home, End, PageUp, PageDown, as in Heatmap). matrixPicture is the small multiple.
 */
import type { Rgb } from "./colors.js";
import { h } from "./dom.js";
import { gridMove } from "./grid-keys.js";

export interface CanvasHeatmapOptions {
  /** Labels of the rows (left) and columns (top). */
  rows: string[];
  columns: string[];
  /** What rows and columns are ("query", "key"), for the corner. */
  rowName: string;
  columnName: string;
  /** The map's accessible name. */
  label: string;
  /** The colour of a cell; undefined leaves it in the pending colour (not computed yet). */
  color(row: number, column: number): Rgb | undefined;
  /** What the readout says of a cell (what a Heatmap cell's aria-label says). */
  describe(row: number, column: number): string;
}

/** The longer side of the map in CSS pixels, unless it has more rows or columns than that (then a pixel each). */
const SIDE = 640;
/**
 * The least room (CSS pixels) a label needs; where cells are smaller, only every few rows or columns get one, with
 * twice the room (their labels are longer: they say the index too).
 */
const LABEL_ROOM = 12;
/** How many rows or columns one label may stand for: the first that leaves it room is taken. */
const STEPS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000];
const HINT = "Point at a cell, or focus the map and use the arrow keys, to read its value.";

export class CanvasHeatmap {
  readonly element: HTMLElement;
  private readonly canvas: HTMLCanvasElement;
  private readonly cursor: HTMLElement;
  private readonly readout: HTMLElement;
  /** Side of a cell in CSS pixels (fractional: cells of one map may differ by a device pixel). */
  private readonly cell: number;
  /** The cell the readout shows, if any. */
  private at: [number, number] | undefined;

  constructor(private readonly options: CanvasHeatmapOptions) {
    const { rows, columns } = options;
    this.cell = Math.max(1, SIDE / Math.max(rows.length, columns.length, 1));
    const [width, height] = [columns.length * this.cell, rows.length * this.cell];
    const dpr = window.devicePixelRatio || 1;
    this.canvas = h("canvas", {
      width: Math.round(width * dpr),
      height: Math.round(height * dpr),
      tabindex: 0,
      role: "application",
      "aria-roledescription": "heatmap",
      "aria-label": `${options.label}; the arrow keys move between cells, whose values are read out above`,
    });
    this.canvas.style.width = `${width}px`;
    this.canvas.style.height = `${height}px`;
    paint(this.canvas, rows.length, columns.length, options.color);
    this.cursor = h("div", { class: "cursor", hidden: true });
    this.readout = h("p", { class: "readout", role: "status" }, HINT);
    this.listen();
    const grid = h(
      "div",
      { class: "canvas-grid" },
      h("div", { class: "corner" }, `${options.rowName} ╲ ${options.columnName}`),
      axis("columns", columns, this.cell),
      axis("rows", rows, this.cell),
      h("div", { class: "plot" }, this.canvas, this.cursor),
    );
    this.element = h("div", { class: "canvas-heatmap" }, this.readout, h("div", { class: "heatmap-scroll" }, grid));
  }

  private listen(): void {
    const c = this.canvas;
    c.addEventListener("pointermove", (e) => {
      const scale = this.options.columns.length / c.clientWidth;
      this.show(Math.floor(e.offsetY * scale), Math.floor(e.offsetX * scale));
    });
    // Back to the keyboard's cell when the pointer leaves a focused map; else nothing is pointed at.
    c.addEventListener("pointerleave", () => (document.activeElement === c && this.at ? this.show(...this.at) : this.clear()));
    c.addEventListener("focus", () => this.show(...(this.at ?? [0, 0])));
    c.addEventListener("blur", () => this.clear());
    c.addEventListener("keydown", (e) => this.onKey(e));
  }

  private onKey(e: KeyboardEvent): void {
    const to = gridMove(e.key, this.at ?? [0, 0], this.options.rows.length, this.options.columns.length);
    if (!to) return;
    e.preventDefault();
    this.show(...to);
  }


  /** Outlines the cell (clamped to the map) and reads it out. */
  private show(row: number, column: number): void {
    const r = Math.min(this.options.rows.length - 1, Math.max(0, row));
    const c = Math.min(this.options.columns.length - 1, Math.max(0, column));
    this.at = [r, c];
    Object.assign(this.cursor.style, { left: `${c * this.cell}px`, top: `${r * this.cell}px`, width: `${this.cell}px`, height: `${this.cell}px` });
    this.cursor.hidden = false;
    this.readout.textContent = this.options.describe(r, c);
  }

  private clear(): void {
    this.cursor.hidden = true;
    this.readout.textContent = HINT;
  }
}

/**
 * Labels along one axis, each centred on its row or column: every one where cells leave room for a label, else
 * every few (then each says its index, as `120 ·for`).
 */
function axis(which: "rows" | "columns", labels: string[], cell: number): HTMLElement {
  const step = cell >= LABEL_ROOM ? 1 : (STEPS.find((s) => s * cell >= 2 * LABEL_ROOM) ?? STEPS.at(-1)!);
  const el = h("div", { class: `axis ${which}`, "aria-hidden": "true" });
  for (let i = 0; i < labels.length; i += step) {
    const text = step === 1 ? labels[i]! : `${i} ${labels[i]}`;
    const label = h("div", { class: "axis-label", title: text }, text);
    label.style[which === "rows" ? "top" : "left"] = `${(i + 0.5) * cell}px`;
    el.append(label);
  }
  return el;
}

/**
 * Paints a rows × columns grid over the whole canvas, pixel by pixel into one image (a fillRect per cell took
 * seconds for a few hundred thousand cells). A cell spans a block of pixels; where cells are smaller than a pixel,
 * each pixel shows the first cell it covers. Cells without a colour are left clear.
 */
function paint(canvas: HTMLCanvasElement, rows: number, columns: number, color: (r: number, c: number) => Rgb | undefined): void {
  const g = canvas.getContext("2d");
  const { width, height } = canvas;
  if (!g || width === 0 || height === 0) return;
  const cells = new Uint8ClampedArray(rows * columns * 4);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < columns; c++) {
      const rgb = color(r, c);
      if (!rgb) continue;
      const i = (r * columns + c) * 4;
      cells[i] = rgb[0];
      cells[i + 1] = rgb[1];
      cells[i + 2] = rgb[2];
      cells[i + 3] = 255;
    }
  }
  const image = g.createImageData(width, height);
  // Whole pixels copied as 32-bit words: the byte order is the same on both sides.
  const from = new Uint32Array(cells.buffer);
  const to = new Uint32Array(image.data.buffer);
  const columnAt = Int32Array.from({ length: width }, (_, x) => Math.floor((x * columns) / width));
  for (let y = 0; y < height; y++) {
    const row = Math.floor((y * rows) / height) * columns;
    for (let x = 0; x < width; x++) to[y * width + x] = from[row + columnAt[x]!]!;
  }
  g.putImageData(image, 0, 0);
}

/**
 * A small multiple: a square matrix on a canvas, one pixel block a cell, at most `size` CSS pixels a side (a grid
 * of DOM cells, one per pair of tokens, froze the page for seconds at a hundred tokens and stood 1300 px tall).
 * `color(r, c)` gives each cell's colour, or undefined for one not computed yet (left blank).
 */
export function matrixPicture(n: number, color: (r: number, c: number) => Rgb | undefined, size = 240): HTMLCanvasElement {
  const cell = Math.max(1, Math.min(11, Math.floor(size / Math.max(1, n))));
  const canvas = h("canvas", { class: "matrix-picture", width: n * cell, height: n * cell, "aria-hidden": "true" });
  // Past `size` cells a side, a pixel a cell, shown shrunk.
  const side = `${Math.min(n * cell, size)}px`;
  Object.assign(canvas.style, { width: side, height: side });
  paint(canvas, n, n, color);
  return canvas;
}

/** A CSS colour as [red, green, blue] (the canvas reads it, so any colour CSS takes will do). */
export function rgbOf(css: string): Rgb {
  const g = h("canvas", { width: 1, height: 1 }).getContext("2d", { willReadFrequently: true });
  if (!g) return [0, 0, 0];
  g.fillStyle = css;
  g.fillRect(0, 0, 1, 1);
  const [r = 0, gr = 0, b = 0] = g.getImageData(0, 0, 1, 1).data;
  return [r, gr, b];
}
