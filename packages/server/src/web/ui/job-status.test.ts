/** How a view words an error it could not get past: a lost connection, for a page's user, not for a program. */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ConnectionError, LostEventsError } from "tsight/client";
import { describeError } from "./job-status.js";

describe("describeError", () => {
  const page = globalThis as { location?: { origin: string } };
  beforeAll(() => void (page.location = { origin: "http://127.0.0.1:8787" }));
  afterAll(() => void delete page.location);

  it("a job whose events broke off: the Jobs view, not RemoteJob.attach, which a page's user cannot call", () => {
    const said = describeError(new LostEventsError("J1", 7, "the event stream of job J1 broke off (fetch failed)"));
    expect(said).toBe("the server at http://127.0.0.1:8787 does not answer (stopped, or the network is down); try again once it is back (the event stream of job J1 broke off (fetch failed); once the server answers, the Jobs view says how job J1 ended).");
    expect(said).not.toContain("RemoteJob.attach");
  });

  it("any other lost connection keeps the client's words", () => {
    expect(describeError(new ConnectionError("POST /v1/jobs: fetch failed"))).toBe("the server at http://127.0.0.1:8787 does not answer (stopped, or the network is down); try again once it is back (POST /v1/jobs: fetch failed).");
  });
});
