/**
 * Public face of adapters/qemu for the rest of gangway: the VM launcher, the QMP client,
 * the serial console, the test guest, and their errors. (The migration-stream codec has
 * its own entry under ./stream/.)
 */
export {
  startVm,
  sweepStaleVms,
  buildQemuArgs,
  vmPaths,
  defaultVmUuid,
  VmRole,
  type VmConfig,
  type VmPaths,
  type StartVmOptions,
  type VmHandle,
  type VmExit,
} from "./vm.ts";
export {
  connectQmp,
  QmpClient,
  RunState,
  MigrationStatus,
  FINAL_MIGRATION_STATUSES,
  type QmpValue,
  type QmpArgs,
  type QmpGreeting,
  type QmpEvent,
  type QmpEventMap,
  type QmpEventName,
  type StatusInfo,
  type MigrationInfo,
  type MigrationRamStats,
  type MigrationCapability,
  type MigrationParameters,
  type QmpClientOptions,
  type QmpConnectOptions,
  type ExecuteOptions,
  type WaitForEventOptions,
} from "./qmp.ts";
export { SerialConsole, type SerialConsoleOptions, type WaitForOptions } from "./serial.ts";
export {
  TEST_GUEST_KERNEL,
  TEST_GUEST_FIRST_PAGE,
  PAGE_SIZE,
  PageKind,
  testGuestAppend,
  testGuestConfig,
  testGuestPageKind,
  testGuestPage,
  checkTestGuestPage,
  waitTestGuestReady,
  verifyTestGuest,
  pauseTestGuest,
  resumeTestGuest,
  testGuestStatus,
  type TestGuestParams,
  type TestGuestReady,
  type TestGuestVerify,
  type PageCheck,
} from "./testGuest.ts";
export * from "./errors.ts";
