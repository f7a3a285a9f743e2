/** Per architecture, the largest difference between tsight and the Hugging Face fixtures over one forward. */
import { fixture, fixtureModel, hfArchitectures, maxAbsDiff, ref, stdlibModels } from "../test/fixtures.js";
import { Tensor } from "../src/tensor/index.js";

const firstTensor = (v: unknown): Tensor => (v instanceof Tensor ? v : Array.isArray(v) ? v[0] : ((v as { logits?: Tensor }).logits ?? (v as { last_hidden_state: Tensor }).last_hidden_state));

export async function fixtureErrors(): Promise<Map<string, { worst: number; where: string }>> {
  const out = new Map<string, { worst: number; where: string }>();
  for (const name of [...hfArchitectures, ...stdlibModels]) {
    const f = await fixture(name);
    const model = await fixtureModel(name);
    const values = new Map<string, Tensor>();
    model.tree.hooks = {
      async call(m, args, forward) {
        const res = await forward(args);
        for (const [k, v] of [[`${m.path}:input`, args[0]], [`${m.path}:output`, firstTensor(res)]] as const) if (!values.has(k)) values.set(k, v as Tensor);
        return res;
      },
    };
    const { logits } = await model.call(ref(f, name.startsWith("stdlib") ? "probe0/input_ids" : "input_ids"));
    values.set("logits", logits);
    let worst = 0,
      where = "";
    for (const [key, want] of f.reference) {
      if (!key.startsWith("single/")) continue;
      const d = maxAbsDiff(values.get(key.slice(7))!, want);
      if (d >= worst) [worst, where] = [d, key.slice(7)];
    }
    out.set(name, { worst, where });
  }
  return out;
}
