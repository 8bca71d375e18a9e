/** Who the CLI speaks as: the source of the events it publishes, and the user its requests name. */
import { jetstream } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { createPublisher, type EventPublisher } from "../infra/events/publisher.ts";

export const cliPublisher = (nc: NatsConnection): EventPublisher => createPublisher(jetstream(nc), "gangway/cli");

/** `requestedBy` of what a user asks through the CLI. */
export const cliUser = (): string => `gangway-cli@${process.env.USER ?? "unknown"}`;
