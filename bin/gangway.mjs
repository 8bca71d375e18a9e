#!/usr/bin/env node
// The published entry: registers tsx so the TypeScript sources run as they are
// (no build step between a clone and a working `gangway`).
import { register } from "tsx/esm/api";
register();
await import("../cli/index.ts");
