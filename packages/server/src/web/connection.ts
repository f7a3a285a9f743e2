/**
 * The page's link to the server it came from: the user's API key (entered once, kept in this browser's
 * localStorage, sent only as the Authorization header by the client), the client backend, the served models, and
 * their meta models (config, module tree and tokenizer; no weights), fetched once each.
 */
import { HttpBackend, LanguageModel, type ModelInfo, type RemoteOptions } from "tsight/client";

const STORAGE_KEY = "tsight.apiKey";

export class Connection {
  /** The server: where this page was loaded from. */
  readonly origin = location.origin;
  private backendWithKey: HttpBackend | undefined;
  private readonly metas = new Map<string, Promise<LanguageModel>>();

  /** The key kept from an earlier visit, if any. */
  storedKey(): string | null {
    try {
      return localStorage.getItem(STORAGE_KEY);
    } catch {
      return null;
    }
  }

  /** Checks `key` with the server (by listing its models) and, if it is accepted, keeps it. */
  async signIn(key: string): Promise<ModelInfo[]> {
    const backend = new HttpBackend({ url: this.origin, apiKey: key.trim(), retry: { attempts: 2 } });
    const models = await backend.models();
    this.backendWithKey = backend;
    this.metas.clear();
    try {
      localStorage.setItem(STORAGE_KEY, key.trim());
    } catch {
      // Storage refused (private mode): the key lasts as long as the page.
    }
    return models;
  }

  signOut(): void {
    this.backendWithKey = undefined;
    this.metas.clear();
    try {
      localStorage.removeItem(STORAGE_KEY);
    } catch {
      // nothing kept
    }
  }

  get signedIn(): boolean {
    return this.backendWithKey !== undefined;
  }

  get backend(): HttpBackend {
    if (!this.backendWithKey) throw new NoKeyError();
    return this.backendWithKey;
  }

  /** Options of every remote call: this server, with the key. */
  remote(): RemoteOptions {
    return { backend: this.backend };
  }

  /** The served model `name` as a meta model, for its tokenizer and module tree. */
  model(name: string): Promise<LanguageModel> {
    let meta = this.metas.get(name);
    if (!meta) {
      meta = LanguageModel.fromServer(name, { backend: this.backend });
      meta.catch(() => this.metas.delete(name));
      this.metas.set(name, meta);
    }
    return meta;
  }
}

/** A view run before a key was entered: the page's own refusal (nothing was sent, so no server refused anything). */
export class NoKeyError extends Error {
  constructor() {
    super("enter your API key at the top of the page first");
    this.name = "NoKeyError";
  }
}

/** The model name in a model key (`LanguageModel:{"repo_id":"stdlib-gpt2",...}` -> `stdlib-gpt2`). */
export function modelName(key: string): string {
  try {
    return String(JSON.parse(key.slice(key.indexOf(":") + 1)).repo_id ?? key);
  } catch {
    return key;
  }
}
