/** The middle value of `xs` (the upper of the two middle ones for an even count): the benches' figure of a set of timings. */
export const median = (xs: readonly number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
