/**
 * The synthetic QEMUs of a pipeline-benchmark run, as one process (its CPU is QEMU's, not
 * gangway's, and is reported apart): for each VM a source QEMU that sends its pre-encoded
 * stream file into the source side's proxy socket, and a destination QEMU listening on the
 * socket the destination side writes into, which parses what it gets and checks every page
 * (pipelineSink.ts).
 *
 * Run: node --import tsx bench/pipelineQemu.ts '<QemuConfig JSON>' (forked by bench/pipeline.ts).
 */
import { createReadStream } from "node:fs";
import { rm } from "node:fs/promises";
import { connect, createServer, type Server, type Socket } from "node:net";
import { once } from "node:events";
import { pipeline } from "node:stream/promises";
import { parseStream } from "../adapters/qemu/stream/stream.ts";
import { runChild } from "./pipelineChild.ts";
import { qemuConfig, type QemuDone } from "./pipelineProtocol.ts";
import { Expectation, isPageCheckError } from "./pipelineSink.ts";

/** Accepts the destination side's one connection and checks the stream it writes. */
async function sink(server: Server, exp: Expectation): Promise<{ bytesReceived: number; pagesChecked: number; pagesExpected: number; deviceBytesChecked: number }> {
  const [socket] = (await once(server, "connection")) as [Socket];
  server.close();
  let bytes = 0;
  try {
    for await (const r of parseStream(socket, { onChunk: (c) => (bytes += c.length) })) {
      if (r.type === "ramSetup") exp.checkSetup(r.blocks);
      else if (r.type === "pages") exp.check(r);
      else if (r.type === "device") exp.deviceSection(r.raw);
    }
    return { bytesReceived: bytes, ...exp.finish() };
  } finally {
    // As QEMU does once it has loaded the stream (or refused it).
    socket.destroy();
  }
}

async function connectRetrying(path: string): Promise<Socket> {
  const until = Date.now() + 10_000;
  for (;;) {
    try {
      const s = connect(path);
      await once(s, "connect");
      return s;
    } catch (err) {
      if (Date.now() > until) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

await runChild(qemuConfig, async (config, ctx) => {
  // The expectation comes from the source's own bytes, before anything is measured.
  const expectations = await Promise.all(config.vms.map((v) => Expectation.fromStreamFile(v.vm, v.streamPath)));
  const servers = await Promise.all(config.vms.map(async (v) => {
    await rm(v.sinkSocket, { force: true });
    const s = createServer();
    s.listen(v.sinkSocket);
    await once(s, "listening");
    return s;
  }));
  const sinks = config.vms.map((_, i) => sink(servers[i]!, expectations[i]!));
  // A failed check is reported at once (not after the other VMs finish).
  sinks.forEach((s) => s.catch(() => undefined));
  ctx.ready();
  await ctx.go;
  const sent = config.vms.map(async (v) => {
    const socket = await connectRetrying(v.sourceSocket);
    socket.resume(); // no return path in pre-copy: nothing comes back that matters
    await pipeline(createReadStream(v.streamPath, { highWaterMark: 256 * 1024 }), socket);
  });
  sent.forEach((s) => s.catch(() => undefined));
  const results = await Promise.all(sinks);
  await Promise.all(sent);
  const result: QemuDone = { vms: config.vms.map((v, i) => ({ vm: v.vm, ...results[i]! })) };
  return { result, cleanup: async () => void (await Promise.all(config.vms.map((v) => rm(v.sinkSocket, { force: true })))) };
}, isPageCheckError);
