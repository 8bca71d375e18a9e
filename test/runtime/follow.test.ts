/**
 * The stream follower on a real nats-server: in order, each message once, and a consumer that
 * went quiet (the server paused for longer than 3.5 heartbeats) is replaced where it stopped.
 */
import { describe, expect, it } from "vitest";
import { jetstream } from "@nats-io/jetstream";
import { StreamFollower } from "../../infra/nats/follow.ts";
import { sleep, startTestNats } from "../helpers/nats.ts";

describe("StreamFollower", () => {
  it("delivers each message once, in order, across a server pause that outlasts its heartbeats", async () => {
    await using nats = await startTestNats();
    const js = jetstream(nats.nc);
    const publisher = await nats.connect("publisher");
    const jsp = jetstream(publisher);
    for (let i = 0; i < 5; i++) await js.publish("gw.test.follow.a", String(i));
    const f = await StreamFollower.start(nats.nc, { filter: "gw.test.follow.>", heartbeatMs: 500 });
    const got: number[] = [];
    const reading = (async () => {
      for await (const m of f) {
        got.push(Number(m.string()));
        if (got.length === 10) break;
      }
    })();
    while (got.length < 5) await sleep(50);
    nats.server.signal("SIGSTOP");
    await sleep(4000);
    nats.server.signal("SIGCONT");
    for (let i = 5; i < 10; i++) await jsp.publish("gw.test.follow.a", String(i));
    await Promise.race([reading, sleep(20_000).then(() => { throw new Error(`stalled after ${got.join(",")}`); })]);
    expect(got).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(f.restarts, "the quiet consumer was replaced").toBeGreaterThanOrEqual(1);
    await f.close();
  }, 60_000);
});
