/**
 * The engine's environment settings (TSIGHT_THREADS, TSIGHT_FUSE, ...), each read once and checked. A value that is
 * not one the setting takes is a SettingError naming the variable and what it takes: a typo such as
 * `TSIGHT_PREPACK=off` must not silently leave the default in place.
 */

/** An environment setting with a value it does not take. */
export class SettingError extends Error {
  override readonly name = "SettingError";
  constructor(
    /** The environment variable. */
    readonly variable: string,
    readonly value: string,
    expected: string,
  ) {
    super(`${variable}=${JSON.stringify(value.length > 40 ? value.slice(0, 40) + "..." : value)} is not a value it takes: ${expected}`);
  }
}

/** Environment variables as `process.env` holds them (none where there is no process: a browser). */
export type Environment = Readonly<Record<string, string | undefined>>;

const processEnv = (): Environment => (globalThis as { process?: { env?: Environment } }).process?.env ?? {};

/** The variable's value, trimmed; undefined when unset or empty. */
function settingText(name: string, env: Environment): string | undefined {
  const text = env[name]?.trim();
  return text ? text : undefined;
}

/** An on/off setting: `1` on, `0` off, unset the default. */
export function switchSetting(name: string, byDefault: boolean, env: Environment = processEnv()): boolean {
  const text = settingText(name, env);
  if (text === undefined) return byDefault;
  if (text === "1") return true;
  if (text === "0") return false;
  throw new SettingError(name, text, `1 (on) or 0 (off), or unset for the default (${byDefault ? "on" : "off"})`);
}

/** A number setting within [min, max] (a whole number when `integer`); undefined when unset. */
export function numberSetting(name: string, bounds: { min: number; max: number; integer?: boolean }, env: Environment = processEnv()): number | undefined {
  const text = settingText(name, env);
  if (text === undefined) return undefined;
  const n = /^[+]?(\d+\.?\d*|\.\d+)$/.test(text) ? Number(text) : NaN;
  if (!Number.isFinite(n) || n < bounds.min || n > bounds.max || (bounds.integer && !Number.isInteger(n))) {
    throw new SettingError(name, text, `${bounds.integer ? "a whole number" : "a number"} from ${bounds.min} to ${bounds.max}, or unset for the default`);
  }
  return n;
}
