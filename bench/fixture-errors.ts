/** Per fixture (both Hugging Face batches and the embedded models), the largest difference between tsight and the reference over one forward. */
import { fixture, fixtureModel, hfFixtures, maxAbsDiff, recordForward, ref, stdlibModels } from "../test/fixtures.js";

export async function fixtureErrors(): Promise<Map<string, { worst: number; where: string }>> {
  const out = new Map<string, { worst: number; where: string }>();
  for (const name of [...hfFixtures, ...stdlibModels]) {
    const f = await fixture(name);
    const { values, logits } = await recordForward(await fixtureModel(name), ref(f, name.startsWith("stdlib") ? "probe0/input_ids" : "input_ids"));
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
