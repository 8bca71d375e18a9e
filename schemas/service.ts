/**
 * Request-reply services: a question and its answer on core NATS, outside the retained
 * stream (they are not facts). A definition names the subject and the shape of both
 * messages, for the side that answers and the side that asks alike. JSON bodies; an empty
 * body is a request with nothing in it.
 */
import type { z } from "zod";
import { subjectTemplate } from "./cloudevent.ts";

/** The parameters a subject template names: "gwsvc.agent.{host}.status" → { host: string }. */
export type TemplateParams<T extends string> = T extends `${string}{${infer P}}${infer Rest}` ? { [K in P]: string } & TemplateParams<Rest> : unknown;

export interface ServiceDefinition<Req extends z.ZodType, Rep extends z.ZodType, Params extends Record<string, string>> {
  /** Subject of one answerer; every param is a subject token. */
  subject(params: Params): string;
  /** Subject filter matching every answerer (for permissions). */
  readonly filter: string;
  readonly request: Req;
  readonly reply: Rep;
}

export type RequestOf<S> = S extends ServiceDefinition<infer Req, z.ZodType, Record<string, string>> ? z.infer<Req> : never;
export type ReplyOf<S> = S extends ServiceDefinition<z.ZodType, infer Rep, Record<string, string>> ? z.infer<Rep> : never;
export type ServiceParams<S> = S extends ServiceDefinition<z.ZodType, z.ZodType, infer P> ? P : never;

export function defineService<T extends string, Req extends z.ZodType, Rep extends z.ZodType>(def: {
  subject: T;
  request: Req;
  reply: Rep;
}): ServiceDefinition<Req, Rep, TemplateParams<T> & Record<string, string>> {
  const t = subjectTemplate<TemplateParams<T> & Record<string, string>>(def.subject);
  return { subject: t.subject, filter: t.filter, request: def.request, reply: def.reply };
}
