/** "Show the code": the tsight program that reproduces a view, in a disclosure with a copy button. */
import { h } from "./dom.js";

export class CodePanel {
  readonly element: HTMLDetailsElement;
  private readonly code: HTMLElement;
  private readonly status: HTMLElement;

  constructor(what: string) {
    this.code = h("code", {}, "Run the view to see its code.");
    this.status = h("span", { class: "copy-status", role: "status" });
    const copy = h("button", { type: "button", class: "secondary", onclick: () => void this.copy() }, "Copy");
    this.element = h(
      "details",
      { class: "code-panel" },
      h("summary", {}, `Show the code (${what})`),
      h("div", { class: "code-tools" }, copy, this.status),
      h("pre", { tabindex: 0, "aria-label": `tsight code: ${what}` }, this.code),
    );
  }

  set(text: string): void {
    this.code.textContent = text;
  }

  get text(): string {
    return this.code.textContent ?? "";
  }

  private async copy(): Promise<void> {
    try {
      await navigator.clipboard.writeText(this.text);
      this.status.textContent = "Copied.";
    } catch {
      // No clipboard (an insecure origin, or permission refused): select it, for the reader to copy.
      const range = document.createRange();
      range.selectNodeContents(this.code);
      getSelection()?.removeAllRanges();
      getSelection()?.addRange(range);
      this.status.textContent = "Selected: press Ctrl+C (⌘C) to copy.";
    }
  }
}
