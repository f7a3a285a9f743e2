/**
 * What the page remembers between loads: the model chosen, the view shown and each view's form (prompts, layer,
 * head, generation settings). Never the API key (connection.ts keeps that, apart) and never results (a run is
 * cheap to repeat, and a result kept from another day could read as today's).
 *
 * Kept in sessionStorage, so that a reload gives this tab back as it was and two tabs do not overwrite each other's;
 * copied to localStorage, from which a new tab or the next visit starts, as the page already keeps the key across
 * visits and a user coming back expects the prompts they left. Not in the URL: prompts are long and may be
 * private, and the hash already names the view.
 *
 * What is read back is checked, never trusted: a malformed entry is dropped, a value of the wrong type is ignored,
 * and a choice the page cannot offer (a model no longer served, a layer the model lacks) leaves the default.
 */

const STORAGE_KEY = "tsight.workbench";

/** A form control's kept value: a checkbox's checked, any other control's value. */
type Kept = string | boolean;
type FormControl = HTMLInputElement | HTMLTextAreaElement | HTMLSelectElement;

interface State {
  model?: string;
  view?: string;
  /** By view id, by control name. */
  forms: Record<string, Record<string, Kept>>;
}

export class SavedState {
  private readonly state: State = readState();

  get model(): string | undefined {
    return this.state.model;
  }

  set model(name: string) {
    this.state.model = name;
    this.write();
  }

  get view(): string | undefined {
    return this.state.view;
  }

  set view(id: string) {
    this.state.view = id;
    this.write();
  }

  /**
   * Gives the view's form controls their kept values, and keeps each one the user changes (only that one: a select
   * whose options are not filled yet has no value to keep). Selects filled later get theirs from `restore`.
   */
  bind(view: string, form: HTMLFormElement): void {
    for (const el of Array.from(form.elements)) if (isControl(el)) this.restore(view, el);
    const keep = (e: Event) => {
      const el = e.target;
      if (!isControl(el)) return;
      (this.state.forms[view] ??= {})[el.name] = el instanceof HTMLInputElement && el.type === "checkbox" ? el.checked : el.value;
      this.write();
    };
    form.addEventListener("input", keep);
    form.addEventListener("change", keep);
  }

  /** Sets `control` to its kept value, if there is one it can take. */
  restore(view: string, control: FormControl): void {
    const kept = this.state.forms[view]?.[control.name];
    if (control instanceof HTMLInputElement && control.type === "checkbox") {
      if (typeof kept === "boolean") control.checked = kept;
      return;
    }
    if (typeof kept !== "string") return;
    if (control instanceof HTMLSelectElement && !Array.from(control.options).some((o) => o.value === kept)) return;
    control.value = kept;
  }

  private write(): void {
    const text = JSON.stringify(this.state);
    for (const storage of stores()) {
      try {
        storage.setItem(STORAGE_KEY, text);
      } catch {
        // Full, or refused (private mode): the page works without it.
      }
    }
  }
}

function isControl(el: unknown): el is FormControl {
  return (el instanceof HTMLInputElement || el instanceof HTMLTextAreaElement || el instanceof HTMLSelectElement) && el.name !== "";
}

/** sessionStorage, then localStorage; either may be refused (storage turned off). */
function stores(): Storage[] {
  const found: Storage[] = [];
  for (const get of [() => sessionStorage, () => localStorage]) {
    try {
      found.push(get());
    } catch {
      // not available
    }
  }
  return found;
}

/** This tab's state, else the last one any tab kept, else none; only what has the right shape. */
function readState(): State {
  for (const storage of stores()) {
    try {
      const state = parseState(storage.getItem(STORAGE_KEY));
      if (state) return state;
    } catch {
      // unreadable: try the next
    }
  }
  return { forms: {} };
}

function parseState(text: string | null): State | undefined {
  if (text === null) return undefined;
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (!isRecord(raw)) return undefined;
  // fromEntries, not assignment: a "__proto__" key stays a plain key.
  const forms: State["forms"] = Object.fromEntries(
    Object.entries(isRecord(raw.forms) ? raw.forms : {})
      .filter((e): e is [string, Record<string, unknown>] => isRecord(e[1]))
      .map(([view, fields]) => [view, Object.fromEntries(Object.entries(fields).filter((e): e is [string, Kept] => typeof e[1] === "string" || typeof e[1] === "boolean"))]),
  );
  return { forms, ...(typeof raw.model === "string" ? { model: raw.model } : {}), ...(typeof raw.view === "string" ? { view: raw.view } : {}) };
}

function isRecord(x: unknown): x is Record<string, unknown> {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}
