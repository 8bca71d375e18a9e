/**
 * Dead letters: a message that fails to parse, or whose handler gave up, is published here
 * with the reason and the original bytes, and nothing else happens.
 */
import { z } from "zod";
import { defineEvent } from "./cloudevent.ts";
import { token } from "./cloudevent.ts";

export const deadLetter = defineEvent({
  type: "io.gangway.dlq.dead-letter.v1",
  family: "dlq",
  subject: "gw.dlq.{family}",
  about: (p: { family: string }) => `dlq/${p.family}`,
  data: z.object({
    reason: z.string().min(1).max(8000),
    /** The function that gave up, or "runtime" for parse failures before any handler. */
    function: z.string().min(1).max(128),
    family: token,
    originalSubject: z.string(),
    originalHeaders: z.record(z.string(), z.string()),
    /** The original payload, base64. */
    original: z.string(),
    deliveryCount: z.number().int().nonnegative(),
    streamSequence: z.number().int().nonnegative().optional(),
  }),
});
