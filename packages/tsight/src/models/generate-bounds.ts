/**
 * Bounds on what a generation takes, in a module with no imports: the engine checks them as it generates, and a
 * job's submission (protocol/executor.ts) before anything runs, without loading the engine.
 */

/** The most stop strings a generation takes, and the longest (bounds on what each step decodes). */
export const MAX_STOP_STRINGS = 64;
export const MAX_STOP_STRING_CHARS = 256;

/** The most sequences generate returns per prompt. */
export const MAX_RETURN_SEQUENCES = 1024;
