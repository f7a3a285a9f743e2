/**
 * The workbench page: the API key form and model choice at the top, one tab per view, the view named in the URL
 * (#lens, #attention, #patching, #generate, #jobs). Everything it asks the server goes through tsight/client. The
 * model, the view and the views' forms are kept between loads (saved-state.ts).
 */
import "./workbench.css";
import type { ModelInfo } from "tsight/client";
import { Connection } from "./connection.js";
import { SavedState } from "./saved-state.js";
import { fill, h } from "./ui/dom.js";
import { describeError, errorTitle, KEY_REFUSED } from "./ui/job-status.js";
import { attentionView } from "./views/attention-view.js";
import { generateView } from "./views/generate-view.js";
import { jobsView } from "./views/jobs-view.js";
import { lensView } from "./views/lens-view.js";
import { patchingView } from "./views/patching-view.js";
import type { View, ViewContext } from "./views/view.js";

const connection = new Connection();
const modelSelect = h("select", { id: "model", name: "model", disabled: true });
const saved = new SavedState();
const ctx: ViewContext = { connection, modelName: () => modelSelect.value, saved };
const views: View[] = [lensView(ctx), attentionView(ctx), patchingView(ctx), generateView(ctx), jobsView(ctx)];

// #region the key

const keyInput = h("input", { id: "api-key", name: "api-key", type: "password", autocomplete: "off", spellcheck: false, placeholder: "tsk_…" });
const keyMessage = h("div", { class: "key-message", role: "status", "aria-live": "polite" });
const forget = h("button", { type: "button", class: "secondary", onclick: () => signOut() }, "Forget key");
const keyForm = h(
  "form",
  { class: "key-form", onsubmit: (e: Event) => (e.preventDefault(), void signIn(keyInput.value)) },
  h("label", { for: "api-key" }, "API key"),
  keyInput,
  h("button", { type: "submit" }, "Use key"),
  forget,
);

async function signIn(given: string): Promise<void> {
  // The line as `tsight serve` prints it (TSIGHT_API_KEY=tsk_...) is taken too.
  const key = given.trim().replace(/^(export\s+)?TSIGHT_API_KEY=/, "");
  if (!key.trim()) {
    showKeyMessage("Enter the API key the server printed when it first started (or one from `tsight keys create`).", true);
    return;
  }
  showKeyMessage("Checking the key…", false);
  try {
    const note = showModels(await connection.signIn(key));
    keyInput.value = "";
    keyInput.placeholder = "key saved in this browser";
    showKeyMessage(`Key accepted; it is kept in this browser only.${note ? ` ${note}` : ""}`, false);
    document.body.classList.add("signed-in");
    shown?.shown?.();
  } catch (e) {
    connection.signOut();
    document.body.classList.remove("signed-in");
    const refused = (e as { code?: string }).code === "AUTH";
    showKeyMessage(refused ? `The server refused this key: ${(e as Error).message}. Check it and enter it again.` : `${errorTitle(e)} ${describeError(e)}`, true);
    keyInput.focus();
  }
}

function signOut(): void {
  connection.signOut();
  for (const v of views) v.reset?.();
  document.body.classList.remove("signed-in");
  keyInput.placeholder = "tsk_…";
  fill(modelSelect);
  modelSelect.disabled = true;
  showKeyMessage("Key forgotten.", false);
  keyInput.focus();
}

// A view's job refused for its key (revoked, or the server's keys changed): the header says so, not "accepted".
document.addEventListener(KEY_REFUSED, (e) => showKeyMessage(`The server refused this key: ${(e as CustomEvent<string>).detail}. Enter a valid one.`, true));

function showKeyMessage(text: string, error: boolean): void {
  keyMessage.textContent = text;
  keyMessage.classList.toggle("error", error);
}

/**
 * Fills the model choice: the model chosen before (the key entered again), else the one kept from the last visit,
 * if the server still has it. Gives a note when the kept one is gone.
 */
function showModels(models: ModelInfo[]): string | undefined {
  const wanted = modelSelect.value || saved.model;
  fill(modelSelect, ...models.map((m) => h("option", { value: m.name }, `${m.name} (${m.modelType})`)));
  modelSelect.disabled = models.length === 0;
  if (wanted && models.some((m) => m.name === wanted)) modelSelect.value = wanted;
  else if (wanted && modelSelect.value) {
    // Kept as chosen now, so the note is given once.
    saved.model = modelSelect.value;
    return `The model ${JSON.stringify(wanted)} used here before is no longer served; showing ${modelSelect.value}.`;
  }
  return undefined;
}

// #endregion
// #region tabs

const tabs = views.map((v) =>
  h("button", { type: "button", role: "tab", id: `tab-${v.id}`, "aria-controls": `panel-${v.id}`, "aria-selected": "false", tabindex: -1, onclick: () => (location.hash = v.id) }, v.title),
);
const panels = views.map((v) => h("div", { role: "tabpanel", id: `panel-${v.id}`, "aria-labelledby": `tab-${v.id}`, hidden: true }, v.element));
const tabList = h("nav", { role: "tablist", "aria-label": "views", class: "tabs" }, ...tabs);
tabList.addEventListener("keydown", (e) => {
  const i = tabs.indexOf(document.activeElement as HTMLButtonElement);
  if (i < 0) return;
  const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[e.key];
  if (next === undefined) return;
  e.preventDefault();
  const tab = tabs[(next + tabs.length) % tabs.length]!;
  tab.focus();
  tab.click();
});

/** The view on screen. */
let shown: View | undefined;

function route(): void {
  // The view the URL names, else the one shown last time (a visit to the bare address), else the first.
  const view = views.find((v) => `#${v.id}` === location.hash) ?? views.find((v) => v.id === saved.view) ?? views[0]!;
  if (location.hash !== `#${view.id}`) history.replaceState(null, "", `#${view.id}`);
  saved.view = view.id;
  if (view === shown) return;
  shown?.hidden?.();
  views.forEach((v, i) => {
    const on = v === view;
    tabs[i]!.setAttribute("aria-selected", String(on));
    tabs[i]!.tabIndex = on ? 0 : -1;
    panels[i]!.hidden = !on;
  });
  shown = view;
  if (connection.signedIn) view.shown?.();
}

// #endregion

modelSelect.addEventListener("change", () => {
  saved.model = modelSelect.value;
  // What the views show was the other model's.
  for (const v of views) v.reset?.();
  shown?.shown?.();
});
document.body.append(
  h(
    "header",
    { class: "top" },
    h("h1", {}, "tsight ", h("span", { class: "subtitle" }, "workbench")),
    keyForm,
    h("div", { class: "model-choice" }, h("label", { for: "model" }, "Model"), modelSelect),
    keyMessage,
  ),
  tabList,
  h("main", {}, h("p", { class: "signed-out-note" }, "Enter your API key above to run the views."), ...panels),
  h("footer", {}, "Every view runs on this server through tsight/client; “Show the code” gives the same computation as a tsight program."),
);
addEventListener("hashchange", route);
route();
const stored = connection.storedKey();
if (stored) void signIn(stored);
else keyInput.focus();
