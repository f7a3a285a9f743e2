/** Job ids: unguessable, url-safe, and never mistaken for a command-line option. */
import { describe, expect, it } from "vitest";
import { isJobId, newJobId } from "./ids.js";

describe("job ids", () => {
  it("are 24 url-safe characters that never start with - or _ (so `tsight jobs show ID` reads them as ids)", () => {
    const ids = Array.from({ length: 5000 }, newJobId);
    for (const id of ids) {
      expect(isJobId(id)).toBe(true);
      expect(id).toMatch(/^[A-Za-z0-9]/);
    }
    expect(new Set(ids).size).toBe(ids.length);
    // Ids do contain - and _ elsewhere: the alphabet is base64url's.
    expect(ids.some((id) => /[-_]/.test(id))).toBe(true);
  });

  it("recognise only that form", () => {
    for (const bad of ["", "abc", "../../etc/passwd", "A".repeat(23), "A".repeat(25), "A".repeat(23) + "!"]) expect(isJobId(bad)).toBe(false);
  });
});
