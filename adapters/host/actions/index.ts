/** Every command a host agent obeys, one action each, for the agent to dispatch. */
import type { AnyHostAction } from "../hostAction.ts";
import { vmStart, vmStop } from "./vm.ts";
import startSource from "./startSource.ts";
import prepareTarget from "./prepareTarget.ts";
import resume from "./resume.ts";
import quitSource from "./quitSource.ts";
import rollback from "./rollback.ts";
import switchover from "./switchover.ts";
import pageRequest from "./pageRequest.ts";
import scan from "./scan.ts";

export const hostActions: readonly AnyHostAction[] = [vmStart, vmStop, startSource, prepareTarget, resume, quitSource, rollback, switchover, pageRequest, scan];
