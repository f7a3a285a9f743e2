/**
 * A real browser for the page's tests: Debian's chromium (installed by .ci/run when missing; never downloaded by
 * Playwright), driven by playwright-core, with a fresh profile each time.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium, type BrowserContext } from "playwright-core";

export const CHROMIUM = "/usr/bin/chromium";

/** Where tests keep what a person may want to look at afterwards (screenshots); ignored by git. */
export const artifactsDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../test-artifacts");

export interface OpenBrowser {
  context: BrowserContext;
  close(): Promise<void>;
}

export async function openBrowser(viewport = { width: 1100, height: 800 }): Promise<OpenBrowser> {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`the browser tests need ${CHROMIUM}: apt-get update && apt-get install -y chromium (.ci/run does this when it is missing)`);
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "tsight-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  return {
    context,
    close: async () => {
      await context.close();
      fs.rmSync(profile, { recursive: true, force: true });
    },
  };
}
