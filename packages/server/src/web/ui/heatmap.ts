/**
 * Heatmap: a rows × columns grid of coloured cells with labels on both axes, laid out in full before any value
 * arrives (cells fill in place as results stream, so nothing moves). Keyboard: the grid is one tab stop; arrow
 * keys, Home and End move between cells. Hovering or focusing a cell shows its detail in a tooltip; every cell has
 * an aria-label that says what it shows.
 */
import { h } from "./dom.js";
import { gridMove } from "./grid-keys.js";

export interface CellContent {
  /** Background colour, and the text colour that reads on it. */
  background: string;
  ink: string;
  /** What the cell shows (may be empty). */
  text: string;
  /** What a screen reader says, and what tests read: e.g. `layer 2, position 3: "len" 0.532`. */
  label: string;
  /** Lines of the tooltip. */
  detail?: string[];
}

export interface HeatmapOptions {
  /** Labels of the rows (left) and columns (top). */
  rows: string[];
  columns: string[];
  /** What rows and columns are ("layer", "position"), for the corner and for labels. */
  rowName: string;
  columnName: string;
  /** The grid's accessible name. */
  label: string;
}

export class Heatmap {
  readonly element: HTMLElement;
  private readonly cells: HTMLElement[][];
  private readonly tooltip: HTMLElement;
  private readonly scroller: HTMLElement;
  private focused: [number, number] = [0, 0];

  constructor(options: HeatmapOptions) {
    const { rows, columns } = options;
    this.tooltip = h("div", { class: "tooltip", role: "tooltip", hidden: true });
    const grid = h("div", { class: "heatmap", role: "grid", "aria-label": options.label, "aria-rowcount": rows.length + 1, "aria-colcount": columns.length + 1 });
    grid.style.gridTemplateColumns = `auto repeat(${columns.length}, minmax(2.75rem, 1fr))`;
    const header = h("div", { role: "row", class: "heatmap-row" }, h("div", { role: "columnheader", class: "corner" }, `${options.rowName} ╲ ${options.columnName}`));
    for (const c of columns) header.append(h("div", { role: "columnheader", class: "column-label", title: c }, c));
    grid.append(header);
    this.cells = rows.map((rowLabel, r) => {
      const row = h("div", { role: "row", class: "heatmap-row" }, h("div", { role: "rowheader", class: "row-label" }, rowLabel));
      const cells = columns.map((columnLabel, c) => {
        const cell = h("div", { role: "gridcell", class: "cell pending", tabindex: r === 0 && c === 0 ? 0 : -1, "aria-label": `${options.rowName} ${rowLabel}, ${options.columnName} ${columnLabel}: not computed yet` });
        cell.dataset.row = String(r);
        cell.dataset.column = String(c);
        row.append(cell);
        return cell;
      });
      grid.append(row);
      return cells;
    });
    this.listen(grid);
    this.scroller = h("div", { class: "heatmap-scroll" }, grid);
    this.element = h("div", { class: "heatmap-frame" }, this.scroller, this.tooltip);
  }

  private listen(grid: HTMLElement): void {
    grid.addEventListener("keydown", (e) => this.onKey(e));
    grid.addEventListener("focusin", (e) => this.show(e.target as HTMLElement));
    grid.addEventListener("focusout", () => this.hide());
    grid.addEventListener("mouseover", (e) => this.show(e.target as HTMLElement));
    grid.addEventListener("mouseleave", () => (grid.contains(document.activeElement) ? this.show(document.activeElement as HTMLElement) : this.hide()));
  }

  set(row: number, column: number, content: CellContent): void {
    const cell = this.cells[row]?.[column];
    if (!cell) return;
    cell.classList.remove("pending");
    cell.style.background = content.background;
    cell.style.color = content.ink;
    cell.replaceChildren(h("span", { class: "cell-text" }, content.text));
    cell.setAttribute("aria-label", content.label);
    cell.dataset.detail = JSON.stringify(content.detail ?? [content.label]);
    if (this.tooltip.dataset.for === `${row},${column}`) this.show(cell);
  }

  /** The cell element at (row, column), for callers that add behaviour (a click that selects a head). */
  cell(row: number, column: number): HTMLElement | undefined {
    return this.cells[row]?.[column];
  }

  private onKey(e: KeyboardEvent): void {
    // Escape closes the tooltip, as a tooltip does (WCAG 1.4.13), and leaves focus where it is.
    if (e.key === "Escape" && !this.tooltip.hidden) {
      e.preventDefault();
      return this.hide();
    }
    const to = gridMove(e.key, this.focused, this.cells.length, this.cells[0]?.length ?? 1);
    if (!to) return;
    e.preventDefault();
    this.focus(...to);
  }


  private focus(r: number, c: number): void {
    const [pr, pc] = this.focused;
    this.cells[pr]![pc]!.tabIndex = -1;
    const cell = this.cells[r]![c]!;
    cell.tabIndex = 0;
    // Scrolled first, so the tooltip that focus shows is placed where the cell ends up.
    this.reveal(cell);
    cell.focus({ preventScroll: true });
    this.focused = [r, c];
  }

  /** Scrolls the cell into view clear of the row labels, which stay at the left (the browser's own scrolling would leave it under them). */
  private reveal(cell: HTMLElement): void {
    cell.scrollIntoView({ block: "nearest", inline: "nearest" });
    const label = cell.parentElement?.firstElementChild;
    const hidden = label ? label.getBoundingClientRect().right - cell.getBoundingClientRect().left : 0;
    if (hidden > 0) this.scroller.scrollLeft -= hidden;
  }

  private show(target: HTMLElement): void {
    const cell = target.closest<HTMLElement>(".cell");
    if (!cell || cell.dataset.row === undefined) return;
    if (document.activeElement === cell) this.focused = [Number(cell.dataset.row), Number(cell.dataset.column)];
    const lines: string[] = cell.dataset.detail ? JSON.parse(cell.dataset.detail) : [cell.getAttribute("aria-label") ?? ""];
    this.tooltip.replaceChildren(...lines.map((l) => h("div", {}, l)));
    this.tooltip.dataset.for = `${cell.dataset.row},${cell.dataset.column}`;
    this.tooltip.hidden = false;
    // Below the cell, kept inside the frame.
    const frame = this.element.getBoundingClientRect();
    const box = cell.getBoundingClientRect();
    const left = Math.max(0, Math.min(box.left - frame.left, frame.width - this.tooltip.offsetWidth));
    this.tooltip.style.left = `${left}px`;
    this.tooltip.style.top = `${box.bottom - frame.top + 4}px`;
    cell.setAttribute("aria-describedby", this.tooltipId());
  }

  private hide(): void {
    this.tooltip.hidden = true;
    delete this.tooltip.dataset.for;
  }

  private tooltipId(): string {
    if (!this.tooltip.id) this.tooltip.id = `tooltip-${Math.random().toString(36).slice(2)}`;
    return this.tooltip.id;
  }
}

/** A legend: the scale's gradient with its two ends (and middle) labelled. */
export function legend(gradient: string, labels: string[], caption: string): HTMLElement {
  const bar = h("div", { class: "legend-bar", role: "img", "aria-label": `${caption}: from ${labels[0]} to ${labels.at(-1)}` });
  bar.style.background = gradient;
  return h("figure", { class: "legend" }, h("figcaption", {}, caption), bar, h("div", { class: "legend-labels" }, ...labels.map((l) => h("span", {}, l))));
}
