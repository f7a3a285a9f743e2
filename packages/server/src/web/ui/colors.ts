/**
 * Colour scales legible to colour-blind readers: a viridis-like sequential scale for probabilities (dark purple to
 * yellow, rising in lightness) and a blue–light grey–orange diverging scale for signed values such as logit
 * differences (blue and orange stay apart for every common colour-vision deficiency). Both are interpolated from
 * a few anchor colours, in sRGB.
 */

export interface ColorScale {
  /** A CSS colour for a value in [0, 1] (clamped). */
  color(t: number): string;
  /** The same colour as [red, green, blue], 0 to 255, for painting pixels. */
  rgb(t: number): Rgb;
  /** Black or white: whichever reads better on color(t). */
  ink(t: number): string;
  /** The scale as a CSS linear-gradient, left to right, for a legend. */
  gradient(): string;
}

export type Rgb = [number, number, number];

const hex = (s: string): Rgb => [1, 3, 5].map((i) => parseInt(s.slice(i, i + 2), 16)) as Rgb;

function interpolatedScale(anchors: string[]): ColorScale {
  const rgb = anchors.map(hex);
  const at = (t: number): Rgb => {
    const x = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * (rgb.length - 1);
    const i = Math.min(rgb.length - 2, Math.floor(x));
    const f = x - i;
    return rgb[i]!.map((c, k) => Math.round(c + (rgb[i + 1]![k]! - c) * f)) as Rgb;
  };
  return {
    color: (t) => `rgb(${at(t).join(" ")})`,
    rgb: at,
    ink: (t) => ink(luminance(at(t))),
    gradient: () => `linear-gradient(to right, ${anchors.join(", ")})`,
  };
}

const INK_DARK = luminance(hex("#111111"));

/** The ink of higher WCAG contrast on a background of luminance `l` (a fixed cut left mid-teal at 3.3:1 in white). */
function ink(l: number): string {
  const onWhite = 1.05 / (l + 0.05);
  const onDark = (l + 0.05) / (INK_DARK + 0.05);
  return onDark >= onWhite ? "#111" : "#fff";
}

/** Relative luminance (WCAG). */
function luminance(rgb: Rgb): number {
  const [r, g, b] = rgb.map((c) => {
    const s = c / 255;
    return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
  }) as Rgb;
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}

/** Sequential, for values from 0 to 1 (probabilities). */
export const sequential = interpolatedScale(["#440154", "#482475", "#414487", "#355f8d", "#2a788e", "#21918c", "#22a884", "#44bf70", "#7ad151", "#bddf26", "#fde725"]);

/** Diverging, for signed values: t = 0.5 is zero. */
export const diverging = interpolatedScale(["#1f4e8c", "#4a7fb8", "#93b8db", "#e8e8e8", "#f4b77a", "#de7b2c", "#a34d0b"]);

/** Where `value` falls on a diverging scale symmetric around zero, reaching ±limit at the ends. */
export function signed(value: number, limit: number): number {
  return limit > 0 ? 0.5 + value / (2 * limit) : 0.5;
}
