/**
 * The workbench page in a real browser (Debian's chromium through playwright-core) against a real server: each
 * view is run on stdlib-gpt2 and what the page shows is checked against the same computation made with the
 * library in this process. Screenshots of the views are kept in test-artifacts/workbench.
 */
import { execFile } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import type { Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { GPT2LMHeadModel } from "../../../tsight/src/models/index.js";
import type { Tensor } from "../../../tsight/src/tensor/index.js";
import { LanguageModel } from "../../../tsight/src/client/language-model.js";
import { startServer, type RunningServer } from "../server/index.js";
import { buildWorkbench } from "../web-build/build.js";
import { diverging } from "../web/ui/colors.js";
import { artifactsDir, openBrowser, type OpenBrowser } from "../../../../test/browser.js";

const PROMPT = "    for i in range(";
const shots = path.join(artifactsDir, "workbench");

let server: RunningServer;
let key: string;
let browser: OpenBrowser;
let page: Page;
let lm: LanguageModel<GPT2LMHeadModel>;
/** Every request the page made, with its Authorization header. */
const requests: { url: string; method: string; authorization: string | undefined }[] = [];
/** Errors thrown in the page, and anything the browser said about the Content-Security-Policy. */
const problems: string[] = [];

beforeAll(async () => {
  fs.mkdirSync(shots, { recursive: true });
  const built = await buildWorkbench(fs.mkdtempSync(path.join(os.tmpdir(), "tsight-workbench-page-")));
  [server, browser, lm] = await Promise.all([
    startServer({ port: 0, dataDir: fs.mkdtempSync(path.join(os.tmpdir(), "tsight-workbench-")), models: ["stdlib-gpt2"], workbenchDir: built.dir, log: () => undefined }),
    openBrowser(),
    LanguageModel.load("stdlib-gpt2"),
  ]);
  key = server.keys.create("workbench").key;
  page = await browser.context.newPage();
  page.on("request", (r) => void requests.push({ url: r.url(), method: r.method(), authorization: r.headers().authorization }));
  page.on("pageerror", (e) => void problems.push(e.message));
  page.on("console", (m) => void (m.type() === "error" && !m.text().includes("401") && problems.push(m.text())));
  await page.goto(`${server.url}/`);
}, 120_000);

afterAll(async () => {
  await browser?.close();
  await server?.close();
});

/** Opens a view by its tab. */
async function open(tab: string, id: string): Promise<void> {
  await page.getByRole("tab", { name: tab }).click();
  await page.locator(`#panel-${id}`).waitFor({ state: "visible" });
}

/** Clicks a view's button after blanking its job line, so that the outcome read next is this run's. */
async function run(panel: string, button: string): Promise<void> {
  await page.locator(`#panel-${panel} .job-state`).evaluate((el) => void (el.textContent = ""));
  await page.locator(`#panel-${panel}`).getByRole("button", { name: button, exact: true }).click();
}

/** How the view's job `what` ended: "completed", "failed" or "cancelled". */
async function outcome(panel: string, what: string): Promise<string> {
  const line = page.locator(`#panel-${panel} .job-state`);
  const ended = new RegExp(`^${what}: (completed|failed|cancelled)`);
  await expect.poll(() => line.innerText(), { timeout: 60_000 }).toMatch(ended);
  return ended.exec(await line.innerText())![1]!;
}

async function labels(selector: string): Promise<string[]> {
  return page.locator(selector).evaluateAll((cells) => cells.map((c) => c.getAttribute("aria-label") ?? ""));
}

const number = (label: string) => Number(/(-?\d+\.\d+)$/.exec(label)![1]);

/**
 * Records the page's long tasks from now on (over 50 ms each, during which it answers no click or key); the function
 * it gives reads their durations.
 */
async function watchLongTasks(): Promise<() => Promise<number[]>> {
  await page.evaluate(`window.longTasks = [];
    window.longTaskWatch ??= new PerformanceObserver((list) => { for (const e of list.getEntries()) window.longTasks.push(Math.round(e.duration)); });
    window.longTaskWatch.observe({ type: "longtask" });`);
  return () => page.evaluate<number[]>(`window.longTasks`);
}

/** The longest a task may hold the page in these tests: generous for a loaded machine (a frozen page held it for 3 to 17 s). */
const RESPONSIVE_MS = 1000;

describe("the workbench page", () => {
  it("a view run before a key is entered asks for one, without saying a server refused it", async () => {
    await page.getByRole("button", { name: "Run the lens" }).click();
    // It said "AUTH: enter your API key at the top of the page first — the server refused the API key; ..."
    await expect.poll(() => page.locator("#panel-lens .job-message").innerText()).toBe("No API key: enter your API key at the top of the page first");
    expect(await page.locator("#panel-lens .result *").count()).toBe(0);
    await page.screenshot({ path: path.join(shots, "no-key.png") });
  });

  it("refuses an invalid key with a clear message, and keeps a valid one in the browser", async () => {
    await page.fill("#api-key", "tsk_nosuchkey_0000");
    await page.getByRole("button", { name: "Use key" }).click();
    await expect.poll(() => page.locator(".key-message").innerText()).toContain("The server refused this key: this API key is not known to the server");
    expect(await page.evaluate(`localStorage.getItem("tsight.apiKey")`)).toBeNull();
    await page.screenshot({ path: path.join(shots, "invalid-key.png") });

    // The line as tsight serve prints it.
    await page.fill("#api-key", `TSIGHT_API_KEY=${key}`);
    await page.keyboard.press("Enter");
    await page.waitForSelector("body.signed-in");
    expect(await page.evaluate(`localStorage.getItem("tsight.apiKey")`)).toBe(key);
    // A reload signs in with the kept key.
    await page.reload();
    await page.waitForSelector("body.signed-in");
    expect(await page.locator("#model").inputValue()).toBe("stdlib-gpt2");
  });

  it("logit lens: the cells show the library's top tokens and probabilities; top 5 on focus", async () => {
    await open("Logit lens", "lens");
    await page.locator("#panel-lens textarea").fill(PROMPT);
    await run("lens", "Run the lens");
    expect(await outcome("lens", "logit lens")).toBe("completed");

    const probs = await lm.trace(PROMPT, async (m) => {
      const out: Tensor[] = [];
      for (const layer of m.transformer.h) out.push((await m.lm_head.call(await m.transformer.ln_f.call(await layer.output))).index(0).softmax(-1));
      return out;
    });
    const tokens = lm.tokenizer.encode(PROMPT).map((id) => lm.tokenizer.decode([id]));
    const expected = probs.flatMap((p, layer) =>
      tokens.map((t, position) => {
        const top = p.index(position).topk(5);
        const best = lm.tokenizer.decode([top.indices.index(0).item()]);
        return `layer ${layer}, position ${position} (${JSON.stringify(t)}): ${JSON.stringify(best)} ${top.values.index(0).item().toFixed(3)}`;
      }),
    );
    expect(await labels("#panel-lens .cell")).toEqual(expected);

    // Keyboard: into the grid, then to layer 2, position 3; its tooltip lists the top 5.
    await page.locator("#panel-lens .cell").first().focus();
    for (const k of ["ArrowRight", "ArrowRight", "ArrowRight", "ArrowDown", "ArrowDown"]) await page.keyboard.press(k);
    expect(await page.evaluate(`document.activeElement?.getAttribute("aria-label")`)).toBe(expected[2 * tokens.length + 3]);
    const top5 = probs[2]!.index(3).topk(5);
    const lines = top5.indices.toArray().map((id, i) => `${i + 1}. ${JSON.stringify(lm.tokenizer.decode([id]))} ${top5.values.index(i).item().toFixed(3)}`);
    expect(await page.locator("#panel-lens .tooltip").innerText()).toBe([`layer 2, after ${JSON.stringify(tokens[3])}`, ...lines].join("\n"));
    await page.locator("#panel-lens .view").screenshot({ path: path.join(shots, "lens.png") });
  });

  it("the lens's code, run with Node against the same server, prints what the page shows", async () => {
    const panel = page.locator("#panel-lens .code-panel");
    await panel.locator("summary").click();
    const code = await panel.locator("code").innerText();
    expect(code).toContain("for (const layer of m[layers])");
    const file = path.join(shots, "lens-code.ts");
    fs.writeFileSync(file, code);
    const run = await promisify(execFile)(process.execPath, ["--conditions=tsight-source", "--import", "tsx", file], {
      cwd: path.resolve(artifactsDir, ".."),
      env: { ...process.env, TSIGHT_HOST: server.url, TSIGHT_API_KEY: key },
      timeout: 60_000,
    });
    const cells = (await labels("#panel-lens .cell")).map((l) => l.slice(l.indexOf(": ") + 2));
    const printed = run.stdout.trim().split("\n");
    expect(printed).toHaveLength(4);
    printed.forEach((line, layer) => expect(line).toBe(`layer ${layer}: ${cells.slice(layer * 6, layer * 6 + 6).join("  ")}`));
  });

  it("a lens run that fails shows its error, and no empty grid laid out for the value that did not come", async () => {
    const panel = page.locator("#panel-lens");
    // An empty prompt is refused in the page, before anything is sent (the server's refusal came as a failed job).
    await panel.locator("textarea").fill("");
    await run("lens", "Run the lens");
    await expect.poll(() => panel.locator(".job-state").innerText()).toBe("logit lens: not sent");
    expect(await panel.locator(".job-message").innerText()).toContain("the prompt is empty");
    expect(await panel.locator(".result *").count()).toBe(0);
    await panel.locator(".view").screenshot({ path: path.join(shots, "lens-failed.png") });
  });

  it("a heatmap wider than the page keeps its row labels at the left, level with their rows, while the cells scroll", async () => {
    const panel = page.locator("#panel-lens");
    await panel.locator("textarea").fill("def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n");
    await run("lens", "Run the lens");
    expect(await outcome("lens", "logit lens")).toBe("completed");
    const scroller = panel.locator(".heatmap-scroll");
    /** Each row label's place against the scroller's left edge and its row's cells, and whether it is on top there. */
    const rows = () =>
      page.evaluate<{ offset: number; top: number; bottom: number; onTop: boolean }[]>(`(() => {
        const scroller = document.querySelector("#panel-lens .heatmap-scroll");
        const left = scroller.getBoundingClientRect().left;
        return Array.from(scroller.querySelectorAll(".row-label"), (label) => {
          const box = label.getBoundingClientRect();
          const cells = Array.from(label.parentElement.querySelectorAll(".cell"), (c) => c.getBoundingClientRect());
          const x = box.left + box.width / 2;
          const onTop = [box.top + 0.5, box.top + box.height / 2, box.bottom - 0.5].every((y) => label.contains(document.elementFromPoint(x, y)));
          return { offset: box.left - left, top: box.top - Math.min(...cells.map((c) => c.top)), bottom: box.bottom - Math.max(...cells.map((c) => c.bottom)), onTop };
        });
      })()`);
    await scroller.evaluate((el) => void (el.scrollLeft = el.scrollWidth / 2));
    expect(await scroller.evaluate((el) => el.scrollLeft)).toBeGreaterThan(200);
    const scrolled = await rows();
    expect(scrolled).toHaveLength(4);
    for (const r of scrolled) {
      expect(Math.abs(r.offset), JSON.stringify(r)).toBeLessThan(1);
      expect(Math.abs(r.top), JSON.stringify(r)).toBeLessThan(1);
      expect(Math.abs(r.bottom), JSON.stringify(r)).toBeLessThan(1);
      expect(r.onTop, JSON.stringify(r)).toBe(true);
    }
    await panel.locator(".heatmap-frame").screenshot({ path: path.join(shots, "heatmap-scrolled.png") });

    // Moving left by keyboard brings each cell out from under the labels.
    await panel.locator(".cell").first().focus();
    await page.keyboard.press("End");
    for (let i = 0; i < 12; i++) {
      await page.keyboard.press("ArrowLeft");
      const [cell, label] = await page.evaluate<[number, number]>(`[document.activeElement.getBoundingClientRect().left, document.activeElement.parentElement.firstElementChild.getBoundingClientRect().right]`);
      expect(cell, `${i + 1} left of the last column`).toBeGreaterThanOrEqual(label - 0.5);
    }
    await panel.locator("textarea").fill(PROMPT);
  });

  it("a lens cell's text is cut at the column labels' width, the whole token in its tooltip", async () => {
    const panel = page.locator("#panel-lens");
    const prompt = "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n";
    await panel.locator("textarea").fill(prompt);
    await run("lens", "Run the lens");
    expect(await outcome("lens", "logit lens")).toBe("completed");
    // The library's top token of every cell, and the one the page would show widest (a newline and many spaces).
    const tops = await lm.trace(prompt, async (m) => {
      const out: string[][] = [];
      for (const layer of m.transformer.h) {
        const ids = (await m.lm_head.call(await m.transformer.ln_f.call(await layer.output))).index(0).argmax(-1).toArray();
        out.push(ids.map((id) => lm.tokenizer.decode([id])));
      }
      return out;
    });
    const positions = tops[0]!.length;
    const widest = tops.flat().reduce((a, b) => (b.length > a.length ? b : a));
    const at = tops.flat().indexOf(widest);
    expect(widest).toMatch(/^\n {10,}$/);

    const cap = await page.evaluate<number>(`parseFloat(getComputedStyle(document.querySelector("#panel-lens .column-label")).maxWidth)`);
    const widths = await panel.locator(".cell").evaluateAll((cells) => cells.map((c) => c.getBoundingClientRect().width));
    // It was 125 px, and so was every column: the grid's columns are as wide as the widest.
    for (const w of widths) expect(w).toBeLessThanOrEqual(cap + 0.5);
    const cell = panel.locator(".cell").nth(at);
    const [shown, whole] = await cell.locator(".cell-text").evaluate((el) => [el.clientWidth, el.scrollWidth]);
    expect(whole).toBeGreaterThan(shown!);
    await cell.hover();
    const tooltip = (await panel.locator(".tooltip").innerText()).split("\n");
    expect(tooltip[0]).toBe(`layer ${Math.floor(at / positions)}, after ${JSON.stringify(lm.tokenizer.decode([lm.tokenizer.encode(prompt)[at % positions]!]))}`);
    expect(tooltip[1]).toMatch(/^1\. ".*" \d\.\d{3}$/);
    expect(tooltip[1]!.slice(3, tooltip[1]!.lastIndexOf(" "))).toBe(JSON.stringify(widest));
    await panel.locator(".view").screenshot({ path: path.join(shots, "lens-cut-cells.png") });
    await panel.locator("textarea").fill(PROMPT);
  });

  it("attention: one head's pattern equals the library's; all heads as small multiples", async () => {
    await open("Attention", "attention");
    const panel = page.locator("#panel-attention");
    await panel.locator("textarea").fill(PROMPT);
    await panel.locator('select[name="layer"]').selectOption("1");
    await panel.locator('select[name="head"]').selectOption("2");
    await run("attention", "Show attention");
    expect(await outcome("attention", "attention")).toBe("completed");
    const pattern = await lm.trace(PROMPT, async (m) => (await m.transformer.h[1].attn.output)[1] as Tensor);
    const shown = await labels("#panel-attention .cell");
    const n = lm.tokenizer.encode(PROMPT).length;
    expect(shown).toHaveLength(n * n);
    // A key after the query (masked) is said to be out of its sight, not a probability of 0.000.
    shown.forEach((label, i) => {
      const [q, k] = [Math.floor(i / n), i % n];
      if (k > q) expect(label).toMatch(/: not visible \(a later position\)$/);
      else expect(number(label), label).toBeCloseTo(pattern.index(0, 2, q, k).item(), 3);
    });
    await panel.locator(".view").screenshot({ path: path.join(shots, "attention-head.png") });

    await panel.locator('select[name="head"]').selectOption("all");
    await expect.poll(() => panel.locator("button.multiple").count()).toBe(4);
    // Each a small picture of the pattern, n x n blocks: in its top row (query 0) the later keys are masked grey.
    const [width, height, masked] = await panel.locator("button.multiple canvas").first().evaluate((el) => {
      const c = el as unknown as { width: number; height: number; getContext(k: "2d"): { getImageData(x: number, y: number, w: number, h: number): { data: ArrayLike<number> } } };
      return [c.width, c.height, Array.from(c.getContext("2d").getImageData(Math.floor(c.width / 2) + 1, 0, 1, 1).data).slice(0, 3)];
    });
    expect(width).toBe(height);
    expect(width as number).toBeLessThanOrEqual(11 * n);
    expect(masked).toEqual([217, 217, 217]);
    await panel.locator("button.multiple").nth(3).click();
    expect(await panel.locator('select[name="head"]').inputValue()).toBe("3");
    expect(number((await labels("#panel-attention .cell"))[n + 0]!)).toBeCloseTo(pattern.index(0, 3, 1, 0).item(), 3);
    await panel.locator('select[name="head"]').selectOption("all");
    await panel.locator(".view").screenshot({ path: path.join(shots, "attention-all-heads.png") });
  });

  it("a result goes when the model is chosen again, and when the next run is refused: none is left to read as another's", async () => {
    const panel = page.locator("#panel-attention");
    expect(await panel.locator(".result canvas").count()).toBe(4);
    await page.locator("#model").selectOption("stdlib-gpt2");
    await expect.poll(() => panel.locator(".result *").count()).toBe(0);
    await panel.locator('select[name="head"]').selectOption("1");
    await run("attention", "Show attention");
    expect(await outcome("attention", "attention")).toBe("completed");
    expect(await panel.locator(".result .cell").count()).toBeGreaterThan(0);
    await panel.locator("textarea").fill("");
    await run("attention", "Show attention");
    await expect.poll(() => panel.locator(".job-message").innerText()).not.toBe("");
    expect(await panel.locator(".result .cell").count()).toBe(0);
    await panel.locator("textarea").fill(PROMPT);
  });

  it("attention on a prompt of hundreds of tokens: a canvas drawn at once, with a readout of the library's values, and the page stays responsive", async () => {
    const panel = page.locator("#panel-attention");
    const prompt = "    x = x + 1\n".repeat(70);
    const tokens = lm.tokenizer.encode(prompt).map((id) => lm.tokenizer.decode([id]));
    const n = tokens.length;
    expect(n).toBeGreaterThan(400);
    await panel.locator("textarea").fill(prompt);
    await panel.locator('select[name="layer"]').selectOption("1");
    await panel.locator('select[name="head"]').selectOption("2");
    const longTasks = await watchLongTasks();
    const started = Date.now();
    await run("attention", "Show attention");
    expect(await outcome("attention", "attention")).toBe("completed");
    const canvas = panel.locator(".canvas-heatmap canvas");
    await canvas.waitFor();
    // Before, 58,000 cells at 241 tokens held the page for 2.9 s; 361,000 at 601 tokens for 17 s.
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(await panel.locator(".cell").count()).toBe(0);

    // The readout of the cell under the pointer, then under the keyboard's cursor, says the library's value.
    const pattern = await lm.trace(prompt, async (m) => (await m.transformer.h[1].attn.output)[1] as Tensor);
    const readout = panel.locator(".readout");
    const expected = (q: number, k: number) => `head 2, query ${q} (${JSON.stringify(tokens[q])}) to key ${k} (${JSON.stringify(tokens[k])}): `;
    const check = async (q: number, k: number) => {
      const text = await readout.innerText();
      if (k > q) return expect(text).toBe(`${expected(q, k)}not visible (a later position)`);
      expect(text.slice(0, text.lastIndexOf(" ") + 1)).toBe(expected(q, k));
      expect(number(text), text).toBeCloseTo(pattern.index(0, 2, q, k).item(), 3);
    };
    await canvas.scrollIntoViewIfNeeded();
    const box = (await canvas.boundingBox())!;
    const cell = box.width / n;
    for (const [q, k] of [[n - 1, 0], [300, 298], [17, 5], [5, 17]] as const) {
      await page.mouse.move(box.x + (k + 0.5) * cell, box.y + (q + 0.5) * cell);
      await check(q, k);
    }
    await page.locator("#panel-attention .canvas-heatmap").screenshot({ path: path.join(shots, "attention-long.png") });
    await canvas.focus();
    for (const key of ["PageDown", "End", "ArrowLeft", "ArrowLeft", "ArrowUp"]) await page.keyboard.press(key);
    await check(n - 2, n - 3);

    // A choice made now is handled at once: all heads, as pictures.
    const asked = Date.now();
    await panel.locator('select[name="head"]').selectOption("all");
    await panel.locator("button.multiple canvas").nth(3).waitFor();
    expect(Date.now() - asked).toBeLessThan(2000);
    const tasks = await longTasks();
    expect(Math.max(0, ...tasks), `long tasks (ms): ${tasks.join(", ")}`).toBeLessThan(RESPONSIVE_MS);
    await panel.locator(".view").screenshot({ path: path.join(shots, "attention-long-all-heads.png") });
  });

  it("attention on a prompt longer than the model's context says so at once, and sends nothing", async () => {
    const panel = page.locator("#panel-attention");
    await panel.locator('select[name="head"]').selectOption("1");
    await panel.locator("textarea").fill("x = 1\n".repeat(200));
    const longTasks = await watchLongTasks();
    const sent = requests.length;
    const started = Date.now();
    await run("attention", "Show attention");
    // Before, the page froze for 17 s laying out 640,000 cells before the server refused the job.
    await expect.poll(() => panel.locator(".job-message").innerText(), { timeout: 3000 }).toBe("VALIDATION · InputError: the prompt is 800 tokens, longer than the model's context of 512 positions; shorten it");
    expect(Date.now() - started).toBeLessThan(3000);
    expect(await panel.locator(".job-state").innerText()).toBe("attention: not sent");
    expect(requests.slice(sent).filter((r) => r.method === "POST")).toEqual([]);
    expect(await panel.locator(".result *").count()).toBe(0);
    expect(Math.max(0, ...(await longTasks()))).toBeLessThan(RESPONSIVE_MS);
    await panel.locator(".view").screenshot({ path: path.join(shots, "attention-too-long.png") });
    await panel.locator("textarea").fill(PROMPT);
    // The logit lens the same (the page is the same for every view that sends a prompt).
    await open("Logit lens", "lens");
    const lens = page.locator("#panel-lens");
    await lens.locator("textarea").fill("x = 1\n".repeat(200));
    const before = requests.length;
    await run("lens", "Run the lens");
    await expect.poll(() => lens.locator(".job-message").innerText(), { timeout: 3000 }).toBe("VALIDATION · InputError: the prompt is 800 tokens, longer than the model's context of 512 positions; shorten it");
    expect(requests.slice(before).filter((r) => r.method === "POST")).toEqual([]);
    expect(await lens.locator(".result *").count()).toBe(0);
    await lens.locator("textarea").fill(PROMPT);
    await open("Attention", "attention");
  });

  it("activation patching: one remote session, cells fill in place, numbers equal the README's", async () => {
    await open("Patching", "patching");
    const panel = page.locator("#panel-patching");
    await run("patching", "Patch every layer and position");
    // The grid is laid out before the first value comes, and does not move or grow as values stream in.
    await panel.locator(".heatmap").waitFor();
    const before = await panel.locator(".heatmap").boundingBox();
    expect(await outcome("patching", "patching")).toBe("completed");
    expect(await panel.locator(".heatmap").boundingBox()).toEqual(before);
    expect(await panel.locator("progress").evaluate((p) => [(p as unknown as { value: number }).value, (p as unknown as { max: number }).max])).toEqual([24, 24]);

    // The README's patching, with the library: each cell a batched trace of the clean and the corrupted prompt.
    const clean = "    for i in range(", corrupted = "    for i in zip(";
    const [len, zip] = [lm.tokenizer.encode("len")[0]!, lm.tokenizer.encode("zip")[0]!];
    const logitDiff = (logits: Tensor) => logits.index(0, -1, len).item() - logits.index(0, -1, zip).item();
    const expected: number[] = [];
    for (let layer = 0; layer < 4; layer++) {
      for (let position = 0; position < 6; position++) {
        const logits = await lm.trace(async (tr) => {
          let source: Tensor;
          tr.invoke(clean, async (m) => {
            source = await m.transformer.h[layer].output;
          });
          return tr.invoke(corrupted, async (m) => {
            const h = await m.transformer.h[layer].output;
            m.transformer.h[layer].output = h.put([null, position], source.index(null, position));
            return await m.lm_head.output;
          });
        });
        expect(logits.shape).toEqual([1, 6, 4096]);
        expected.push(logitDiff(logits));
      }
    }
    const shown = await labels("#panel-patching .cell");
    shown.forEach((label, i) => expect(number(label), label).toBeCloseTo(expected[i]!, 3));
    // The README's printed rows (positions 4 and 5), as the cells' text.
    const texts = await panel.locator(".cell").allInnerTexts();
    expect([0, 1, 2, 3].map((l) => texts[l * 6 + 4]).join("  ")).toBe("-0.10  -0.32  -1.42  -2.13");
    expect([0, 1, 2, 3].map((l) => texts[l * 6 + 5]).join("  ")).toBe("2.76  3.01  3.95  4.32");
    expect(await panel.locator(".summary").innerText()).toBe("Unpatched: clean 4.32, corrupted -2.13.");
    // Coloured by the change from the corrupted run: a cell patching left as it was (layer 0, position 0: -2.13) is
    // the scale's middle, not the blue of "away from the clean answer"; the last layer's last position, the clean
    // run's own difference, the far orange end.
    const rgb = (css: string) => css.match(/\d+/g)!.map(Number);
    const cellColour = (i: number) => panel.locator(".cell").nth(i).evaluate((c) => (c as unknown as { style: { background: string } }).style.background);
    expect(rgb(await cellColour(0))).toEqual(diverging.rgb(0.5));
    expect(rgb(await cellColour(23))).toEqual(diverging.rgb(1));
    expect(await panel.locator(".legend").innerText()).toContain("-2.13 (corrupted)");
    await page.mouse.move(0, 0);
    await panel.locator(".view").screenshot({ path: path.join(shots, "patching.png") });
    await panel.locator("details.code-panel summary").click();
    expect(await panel.locator("code").innerText()).toContain("const patching = await lm.session(async (s) => {");
  });

  it("generation streams tokens; steered by a prompt difference it says what the library says", async () => {
    await open("Generate", "generate");
    const panel = page.locator("#panel-generate");
    await panel.locator('textarea[name="prompt"]').fill(PROMPT);
    await panel.locator('input[name="max-new-tokens"]').fill("10");
    await run("generate", "Generate");
    expect(await outcome("generate", "generation")).toBe("completed");
    const plain = await lm.generate(PROMPT, { maxNewTokens: 10 });
    expect(await panel.locator(".continuation").innerText()).toBe(plain.text[0]);

    await panel.locator('input[name="steer"]').check();
    await panel.locator('select[name="steer-layer"]').selectOption("2");
    await run("generate", "Generate");
    expect(await outcome("generate", "steered generation")).toBe("completed");
    // The README's steering, with the library.
    const [zipAct, rangeAct] = await lm.trace(async (tr) => {
      const read = async (m: any) => ((await m.transformer.h[2].output) as Tensor).index(0, -1);
      const a = tr.invoke("    for x in zip(", read), b = tr.invoke("    for x in range(", read);
      return [await a, await b];
    });
    const steer = zipAct.sub(rangeAct);
    const steered = await lm.generate(PROMPT, { maxNewTokens: 10 }, async (m, tr) => {
      for await (const _ of tr.all()) m.transformer.h[2].output = (h) => h.add(tr.vars.steer.mul(2));
    }, { vars: { steer } });
    expect(steered.text[0]).toBe("zip(zip(zip(zip(zip(");
    expect(await panel.locator(".continuation").innerText()).toBe(steered.text[0]);
    await panel.locator(".view").screenshot({ path: path.join(shots, "generate.png") });
    await panel.locator("details.code-panel summary").click();
    const code = await panel.locator("code").innerText();
    expect(code).toContain("const direction = await lm.trace(async (tr) => {");
    expect(code).toContain("vars: { layers: \"transformer.h\", layer: 2, direction: direction, scale: 2 }");
  });

  it("the generated text follows the stream to its end, until the reader scrolls up", async () => {
    const panel = page.locator("#panel-generate");
    await panel.locator('input[name="steer"]').uncheck();
    await panel.locator('textarea[name="prompt"]').fill(PROMPT);
    await panel.locator('input[name="max-new-tokens"]').fill("400");
    await run("generate", "Generate");
    const box = panel.locator("pre.generation");
    const place = () => box.evaluate((el) => ({ overflow: el.scrollHeight - el.clientHeight, fromEnd: el.scrollHeight - el.scrollTop - el.clientHeight, top: el.scrollTop, length: el.textContent!.length }));
    // Once the text is taller than the box, the box shows its end (it stayed at the top).
    await expect.poll(async () => (await place()).overflow, { timeout: 60_000 }).toBeGreaterThan(40);
    expect((await place()).fromEnd).toBeLessThan(4);
    // Text that comes while another tab is shown is followed too.
    await open("Jobs", "jobs");
    await new Promise((r) => setTimeout(r, 300));
    await open("Generate", "generate");
    expect((await place()).fromEnd).toBeLessThan(4);
    // Scrolled up, it stays where the reader put it while more comes.
    await box.evaluate((el) => void (el.scrollTop = 0));
    const before = (await place()).length;
    expect(await outcome("generate", "generation")).toBe("completed");
    const after = await place();
    expect(after.length).toBeGreaterThan(before);
    expect(after.top).toBe(0);
    await panel.locator('input[name="max-new-tokens"]').fill("10");
  });

  it("a failing job and a cancelled one say so in the page", async () => {
    const panel = page.locator("#panel-generate");
    await panel.locator('input[name="steer"]').uncheck();
    // Longer than the model's 512 positions with the tokens to generate: refused in the page, nothing sent.
    await panel.locator('textarea[name="prompt"]').fill("x = 1\n".repeat(200));
    const sent = requests.length;
    await run("generate", "Generate");
    await expect.poll(() => panel.locator(".job-message").innerText(), { timeout: 3000 }).toMatch(/^VALIDATION · InputError: the prompt is \d+ tokens and 10 more are to be generated, longer than the model.s context of 512 positions; shorten it or generate fewer$/);
    expect(await panel.locator(".job-state").innerText()).toBe("generation: not sent");
    expect(requests.slice(sent).filter((r) => r.method === "POST")).toEqual([]);
    // A job the server refuses: a steering direction from an empty prompt.
    await panel.locator('textarea[name="prompt"]').fill(PROMPT);
    await panel.locator('input[name="steer"]').check();
    const toward = await panel.locator('input[name="toward"]').inputValue();
    await panel.locator('input[name="toward"]').fill("");
    await run("generate", "Generate");
    expect(await outcome("generate", "steering direction")).toBe("failed");
    expect(await panel.locator(".job-message").innerText()).toMatch(/^VALIDATION · InputError: .*empty/);
    // No box holding only the prompt, as if it were the generation.
    expect(await panel.locator(".result *").count()).toBe(0);
    await panel.locator(".view").screenshot({ path: path.join(shots, "failed-job.png") });
    await panel.locator('input[name="toward"]').fill(toward);
    await panel.locator('input[name="steer"]').uncheck();

    // A long session (long prompts: a trace per layer and position), cancelled once it has begun.
    await open("Patching", "patching");
    const patching = page.locator("#panel-patching");
    const lines = "    a = b\n".repeat(24);
    await patching.locator('textarea[name="clean"]').fill(`${lines}    for i in range(`);
    await patching.locator('textarea[name="corrupted"]').fill(`${lines}    for i in zip(`);
    await run("patching", "Patch every layer and position");
    await patching.locator(".cell:not(.pending)").first().waitFor();
    await patching.getByRole("button", { name: "Cancel" }).click();
    expect(await outcome("patching", "patching")).toBe("cancelled");
    expect(await patching.locator(".job-message").innerText()).toBe("The job was cancelled.");
    expect(await patching.locator(".cell.pending").count()).toBeGreaterThan(0);
  });

  it("a run under way when the model is chosen again is dropped: its job cancelled, nothing of it drawn after", async () => {
    const patching = page.locator("#panel-patching");
    await run("patching", "Patch every layer and position");
    await patching.locator(".cell:not(.pending)").first().waitFor();
    await page.locator("#model").selectOption("stdlib-gpt2");
    await expect.poll(() => patching.locator(".result *").count()).toBe(0);
    expect(await patching.locator(".job-state").innerText()).toBe("Not run yet.");
    await new Promise((r) => setTimeout(r, 1500));
    expect(await patching.locator(".result *").count()).toBe(0);
    expect(await patching.locator(".job-state").innerText()).toBe("Not run yet.");
  });

  it("jobs: the key's jobs with their states, a result to download; the server's models and workers", async () => {
    await open("Jobs", "jobs");
    const panel = page.locator("#panel-jobs");
    await expect.poll(() => panel.locator(".jobs tbody tr").count()).toBeGreaterThanOrEqual(8);
    const rows = await panel.locator(".jobs tbody tr").allInnerTexts();
    expect(rows.filter((r) => r.includes("COMPLETED")).length).toBeGreaterThanOrEqual(6);
    expect(rows.some((r) => r.includes("CANCELLED"))).toBe(true);
    expect(rows.some((r) => /ERROR \([A-Z_]+\)/.test(r))).toBe(true);
    expect(rows.some((r) => r.includes("session"))).toBe(true);
    const status = await panel.locator(".server-status").innerText();
    expect(status).toMatch(/stdlib-gpt2\s+gpt2\s+loaded/);
    expect(status).toContain("thread-");

    const download = page.waitForEvent("download");
    await panel.getByRole("button", { name: "Download result" }).first().click();
    const file = await (await download).path();
    const bytes = fs.readFileSync(file);
    const headerLength = Number(bytes.readBigUInt64LE(0));
    expect(JSON.parse(bytes.subarray(8, 8 + headerLength).toString("utf8"))).toHaveProperty("__metadata__");
    await panel.locator(".view").screenshot({ path: path.join(shots, "jobs.png") });
  });

  it("reads at phone width: nothing but the heatmap scrolls sideways", async () => {
    const phone = await browser.context.newPage();
    await phone.setViewportSize({ width: 390, height: 844 });
    await phone.goto(`${server.url}/#lens`);
    await phone.waitForSelector("body.signed-in");
    await phone.getByRole("button", { name: "Run the lens" }).click();
    await phone.locator("#panel-lens .cell:not(.pending)").first().waitFor();
    expect(await phone.evaluate<number>(`document.documentElement.scrollWidth`)).toBeLessThanOrEqual(390);
    await phone.screenshot({ path: path.join(shots, "phone-lens.png"), fullPage: true });
    // The jobs table's eight columns stack: each row a block of labelled lines, its wrapper not scrolling sideways.
    await phone.getByRole("tab", { name: "Jobs" }).click();
    const rows = phone.locator("#panel-jobs .jobs tbody tr");
    await rows.first().waitFor();
    const wrapper = phone.locator("#panel-jobs .jobs .table-scroll");
    expect(await wrapper.evaluate((e) => e.scrollWidth - e.clientWidth)).toBeLessThanOrEqual(0);
    expect(await phone.evaluate<number>(`document.documentElement.scrollWidth`)).toBeLessThanOrEqual(390);
    const labels = await phone.evaluate<string[]>(`[...document.querySelectorAll("#panel-jobs .jobs tbody tr:first-child td")].map((td) => getComputedStyle(td, "::before").content)`);
    expect(labels.slice(0, 4)).toEqual(['"job"', '"model"', '"kind"', '"state"']);
    await phone.screenshot({ path: path.join(shots, "phone-jobs.png"), fullPage: true });
    await phone.close();
  });

  it("the model, the view and the forms come back after a reload and in a new tab; the key is not among them", async () => {
    await open("Attention", "attention");
    const attention = page.locator("#panel-attention");
    await attention.locator("textarea").fill("kept = 1");
    await attention.locator('select[name="layer"]').selectOption("3");
    await attention.locator('select[name="head"]').selectOption("2");
    await open("Generate", "generate");
    const generate = page.locator("#panel-generate");
    await generate.locator('input[name="max-new-tokens"]').fill("7");
    await generate.locator('input[name="temperature"]').fill("0.5");
    await generate.locator('input[name="steer"]').check();
    await generate.locator('input[name="toward"]').fill("    while (");

    const restored = async (p: Page) => {
      await p.waitForSelector("body.signed-in");
      expect(new URL(p.url()).hash).toBe("#generate");
      expect(await p.locator("#model").inputValue()).toBe("stdlib-gpt2");
      const g = p.locator("#panel-generate"), a = p.locator("#panel-attention");
      expect(await g.locator('input[name="max-new-tokens"]').inputValue()).toBe("7");
      expect(await g.locator('input[name="temperature"]').inputValue()).toBe("0.5");
      // A temperature kept: top-p and the seed are on with it.
      expect(await g.locator('input[name="top-p"]').isEnabled()).toBe(true);
      expect(await g.locator('input[name="steer"]').isChecked()).toBe(true);
      expect(await g.locator('input[name="toward"]').inputValue()).toBe("    while (");
      expect(await a.locator("textarea").inputValue()).toBe("kept = 1");
      // The layer and head choices are filled once the model's tree is here, then set to the kept ones.
      await p.getByRole("tab", { name: "Attention" }).click();
      await expect.poll(() => a.locator('select[name="layer"]').inputValue()).toBe("3");
      expect(await a.locator('select[name="head"]').inputValue()).toBe("2");
      // Back where it was: the view shown is kept too.
      await p.getByRole("tab", { name: "Generate" }).click();
    };
    await page.reload();
    await restored(page);
    const kept = await page.evaluate<(string | null)[]>(`[sessionStorage.getItem("tsight.workbench"), localStorage.getItem("tsight.workbench")]`);
    for (const text of kept) {
      expect(text).toContain("kept = 1");
      expect(text).not.toContain(key);
    }
    // A new tab starts from what the last one kept.
    const tab = await browser.context.newPage();
    await tab.goto(`${server.url}/`);
    await restored(tab);
    await tab.screenshot({ path: path.join(shots, "restored.png") });
    await tab.close();
    await page.locator("#panel-generate").getByRole("checkbox").uncheck();
    // Greedy (no temperature): top-p and the seed would change nothing, so they are off.
    const g = page.locator("#panel-generate");
    await g.locator('input[name="temperature"]').fill("");
    for (const name of ["top-p", "seed"]) expect(await g.locator(`input[name="${name}"]`).isDisabled()).toBe(true);
    await g.locator('input[name="temperature"]').fill("0.7");
    for (const name of ["top-p", "seed"]) expect(await g.locator(`input[name="${name}"]`).isEnabled()).toBe(true);
    await g.locator('input[name="temperature"]').fill("");
  });

  it("a kept state that is stale or malformed leaves the defaults, and breaks nothing", async () => {
    const states = {
      // Written out: a "__proto__" key in an object literal would set its prototype, not be a key.
      stale: '{"model": "no-such-model", "view": "no-such-view", "forms": {"lens": {"prompt": 42}, "attention": {"layer": "99", "head": "all", "prompt": "still here"}, "generate": {"steer": "yes"}, "__proto__": {"lens": {"prompt": "x"}}}}',
      malformed: '{"model": "stdlib-gpt2", "forms": ',
    };
    for (const [what, text] of Object.entries(states)) {
      const tab = await browser.context.newPage();
      const errors: string[] = [];
      tab.on("pageerror", (e) => void errors.push(e.message));
      // Both storages, before the page's script runs: this tab's and the one a new tab falls back to.
      await tab.addInitScript(`sessionStorage.setItem("tsight.workbench", ${JSON.stringify(text)}); localStorage.setItem("tsight.workbench", ${JSON.stringify(text)});`);
      await tab.goto(`${server.url}/`);
      await tab.waitForSelector("body.signed-in");
      expect(new URL(tab.url()).hash, what).toBe("#lens");
      expect(await tab.locator("#model").inputValue(), what).toBe("stdlib-gpt2");
      expect(await tab.locator("#panel-lens textarea").inputValue(), what).toBe(PROMPT);
      expect(await tab.locator('#panel-generate input[name="steer"]').isChecked(), what).toBe(false);
      await tab.getByRole("tab", { name: "Attention" }).click();
      await expect.poll(() => tab.locator('#panel-attention select[name="layer"] option').count()).toBe(4);
      expect(await tab.locator('#panel-attention select[name="layer"]').inputValue(), what).toBe("0");
      if (what === "stale") {
        expect(await tab.locator("#panel-attention textarea").inputValue()).toBe("still here");
        expect(await tab.locator(".key-message").innerText()).toContain('The model "no-such-model" used here before is no longer served; showing stdlib-gpt2.');
        await tab.screenshot({ path: path.join(shots, "stale-state.png") });
      }
      await tab.getByRole("tab", { name: "Logit lens" }).click();
      await tab.getByRole("button", { name: "Run the lens" }).click();
      await tab.locator("#panel-lens .cell:not(.pending)").first().waitFor();
      expect(errors, what).toEqual([]);
      await tab.close();
    }
  });

  it("tabs follow the arrow keys, and the URL names the view", async () => {
    await open("Logit lens", "lens");
    await page.getByRole("tab", { name: "Logit lens" }).focus();
    await page.keyboard.press("ArrowRight");
    await page.locator("#panel-attention").waitFor({ state: "visible" });
    expect(new URL(page.url()).hash).toBe("#attention");
    await page.keyboard.press("End");
    await page.locator("#panel-jobs").waitFor({ state: "visible" });
    expect(await page.getByRole("tab", { name: "Jobs" }).getAttribute("aria-selected")).toBe("true");
  });

  it("threw nothing and broke no rule of its Content-Security-Policy", () => {
    expect(problems).toEqual([]);
  });

  it("sent the key only as the Authorization header, and only to /v1", () => {
    const api = requests.filter((r) => new URL(r.url).pathname.startsWith("/v1/"));
    expect(api.length).toBeGreaterThan(10);
    expect(requests.some((r) => r.url.includes(key))).toBe(false);
    for (const r of requests) {
      if (new URL(r.url).pathname.startsWith("/v1/") && r.authorization !== "Bearer tsk_nosuchkey_0000") expect(r.authorization).toBe(`Bearer ${key}`);
      if (!new URL(r.url).pathname.startsWith("/v1/")) expect(r.authorization).toBeUndefined();
    }
  });
});
