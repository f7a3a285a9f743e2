/**
 * Where a key moves a grid's cursor (the DOM heatmap's focused cell, the canvas heatmap's readout), within the
 * grid's `rows` x `columns`: the arrows by one, Home and End along the row, PageUp and PageDown along the column.
 * Undefined for other keys.
 */
export function gridMove(key: string, [r, c]: readonly [number, number], rows: number, columns: number): [number, number] | undefined {
  const moves: Record<string, [number, number]> = {
    ArrowUp: [r - 1, c],
    ArrowDown: [r + 1, c],
    ArrowLeft: [r, c - 1],
    ArrowRight: [r, c + 1],
    Home: [r, 0],
    End: [r, columns - 1],
    PageUp: [0, c],
    PageDown: [rows - 1, c],
  };
  const to = moves[key];
  return to && [Math.min(rows - 1, Math.max(0, to[0])), Math.min(columns - 1, Math.max(0, to[1]))];
}
