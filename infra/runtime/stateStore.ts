/** The functions' StateStore over a JetStream KV bucket (JSON values). */
import type { KV } from "@nats-io/kv";
import type { StateStore } from "../../kit/index.ts";

function checkKey(key: string): string {
  if (!/^[-/_=.a-zA-Z0-9]+$/.test(key) || key.startsWith(".") || key.endsWith(".")) throw new TypeError(`invalid state key "${key}"`);
  return key;
}

export function kvStateStore(kv: KV): StateStore {
  return {
    async get<T>(key: string) {
      const e = await kv.get(checkKey(key));
      return e && e.operation === "PUT" ? e.json<T>() : undefined;
    },
    async put<T>(key: string, value: T) {
      await kv.put(checkKey(key), JSON.stringify(value));
    },
    async create<T>(key: string, value: T) {
      try {
        await kv.create(checkKey(key), JSON.stringify(value));
        return true;
      } catch (err) {
        // The server answers "wrong last sequence" when the key exists: someone claimed it.
        const e = await kv.get(key);
        if (e && e.operation === "PUT") return false;
        throw err;
      }
    },
    async delete(key: string) {
      await kv.delete(checkKey(key));
    },
    async keys(prefix: string) {
      const out: string[] = [];
      const it = await kv.keys(prefix ? `${prefix}>` : ">");
      for await (const k of it) out.push(k);
      return out;
    },
  };
}
