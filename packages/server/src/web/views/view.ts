/** What the views share: the page context, and the frame of a view that runs jobs (form, status, result, code). */
import { errorFromInfo, type LanguageModel } from "tsight/client";
import type { Connection } from "../connection.js";
import { programOf } from "../recipes/code.js";
import type { Recipe } from "../recipes/recipe.js";
import type { SavedState } from "../saved-state.js";
import { CodePanel } from "../ui/code-panel.js";
import { h } from "../ui/dom.js";
import { JobStatus } from "../ui/job-status.js";

export interface ViewContext {
  connection: Connection;
  /** The model chosen at the top of the page. */
  modelName(): string;
  /** What the page keeps between loads (the forms' values among it). */
  saved: SavedState;
}

export interface View {
  /** Its name in the URL (#lens). */
  id: string;
  title: string;
  element: HTMLElement;
  /** Called when the view is shown (to refresh what it shows). */
  shown?(): void;
  /** Drops what it shows: its results were another model's, or another key's. */
  reset?(): void;
  hidden?(): void;
}

/** A view that runs jobs: an intro, a form with a Run button, the job's status, the result and its code. */
export class JobView {
  readonly element: HTMLElement;
  readonly status = new JobStatus();
  readonly code: CodePanel;
  readonly result: HTMLElement;
  private readonly runButton: HTMLButtonElement;
  private readonly id: string;

  constructor(
    readonly ctx: ViewContext,
    options: { id: string; title: string; intro: string; fields: HTMLElement[]; runLabel: string; code: string; run: () => Promise<void> },
  ) {
    this.id = options.id;
    this.code = new CodePanel(options.code);
    this.result = h("div", { class: "result", "aria-live": "polite" });
    this.runButton = h("button", { type: "submit", class: "run" }, options.runLabel);
    const form = h(
      "form",
      {
        class: "view-form",
        onsubmit: (e: Event) => {
          e.preventDefault();
          void this.guard(options.run);
        },
      },
      ...options.fields,
      h("div", { class: "form-actions" }, this.runButton),
    );
    // A run the browser itself blocks (a field out of its range) is no run: the last one's message goes, not left
    // standing as if about this one.
    form.addEventListener("invalid", () => this.status.clear(), true);
    ctx.saved.bind(options.id, form);
    this.element = h("section", { class: "view", "aria-labelledby": `${options.id}-title` }, h("h2", { id: `${options.id}-title` }, options.title), h("p", { class: "intro" }, options.intro), form, this.status.element, this.result, this.code.element);
  }

  /** The chosen model as a meta model. */
  model(): Promise<LanguageModel> {
    return this.ctx.connection.model(this.ctx.modelName());
  }

  /** Gives a select filled after the page loaded (a model's layers) its kept value, if it is one of its options. */
  restore(select: HTMLSelectElement): void {
    this.ctx.saved.restore(this.id, select);
  }

  /**
   * Whether a prompt of `tokens` tokens (at least one), with `extra` to generate, fits the model's context; when not, the run is
   * refused here at once, saying so (the server would refuse it; nothing is sent, and no result is laid out for it).
   * The library's checkInput says the same, but needs Node.
   */
  fits(lm: LanguageModel, what: string, tokens: number, extra = 0): boolean {
    if (tokens === 0) {
      this.status.refuse(what, errorFromInfo({ code: "VALIDATION", type: "InputError", message: "the prompt is empty: enter some text", retryable: false }));
      return false;
    }
    const context = lm.model.config.maxPositions;
    if (context === null || tokens + extra <= context) return true;
    const message = extra ? `the prompt is ${tokens} tokens and ${extra} more are to be generated, longer than the model's context of ${context} positions; shorten it or generate fewer` : `the prompt is ${tokens} tokens, longer than the model's context of ${context} positions; shorten it`;
    this.status.refuse(what, errorFromInfo({ code: "VALIDATION", type: "InputError", message, retryable: false }));
    return false;
  }

  /** Shows the program that does what `steps` do. */
  showCode(steps: Recipe[]): void {
    this.code.set(programOf(steps, { model: this.ctx.modelName(), origin: this.ctx.connection.origin }));
  }

  /** Drops the result and the status shown, and the run under way (see View.reset). */
  reset(): void {
    this.status.abandon();
    this.result.replaceChildren();
  }

  /**
   * Runs `fn` with the Run button disabled; an error it throws is shown under the form. The last run's result goes
   * first: left beside this run's error it would read as this run's.
   */
  private async guard(fn: () => Promise<void>): Promise<void> {
    this.runButton.disabled = true;
    this.result.replaceChildren();
    this.status.clear();
    try {
      await fn();
    } catch (e) {
      this.status.fail(e);
    } finally {
      this.runButton.disabled = false;
    }
  }
}

/**
 * Labels for a prompt's tokens, as the model sees them. A token that is part of a character (an emoji's or a CJK
 * character's bytes, split over tokens) decodes to U+FFFD alone, alike for all: its vocabulary entry tells them apart.
 */
export function tokenLabels(lm: LanguageModel, ids: number[]): string[] {
  return ids.map((id) => {
    const text = lm.tokenizer.decode([id]);
    return text.includes("\uFFFD") ? (lm.tokenizer.idToToken(id) ?? text) : text;
  });
}
