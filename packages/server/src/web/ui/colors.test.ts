/** The heatmaps' ink: black or white, whichever reads better on each colour of the scales (WCAG contrast). */
import { describe, expect, it } from "vitest";
import { diverging, sequential } from "./colors.js";

const channel = (c: number) => (c / 255 <= 0.03928 ? c / 255 / 12.92 : ((c / 255 + 0.055) / 1.055) ** 2.4);
const luminance = (css: string) => {
  const [r, g, b] = (/\d+ \d+ \d+/.exec(css)?.[0] ?? (css === "#111" ? "17 17 17" : "255 255 255")).split(" ").map(Number) as [number, number, number];
  return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
};
const contrast = (a: string, b: string) => {
  const [x, y] = [luminance(a), luminance(b)].sort((p, q) => q - p) as [number, number];
  return (x + 0.05) / (y + 0.05);
};

describe("heatmap ink", () => {
  it("is the better-reading of black and white on every colour, at least 4.3:1 (mid-teal in white was 3.3:1)", () => {
    for (const scale of [sequential, diverging]) {
      for (let i = 0; i <= 100; i++) {
        const t = i / 100;
        const bg = scale.color(t), ink = scale.ink(t);
        const other = ink === "#111" ? "#fff" : "#111";
        expect(contrast(ink, bg), `t=${t} ${bg}`).toBeGreaterThanOrEqual(contrast(other, bg));
        expect(contrast(ink, bg), `t=${t} ${bg}`).toBeGreaterThan(4.3);
      }
    }
  });
});
