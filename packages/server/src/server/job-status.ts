/**
 * The job state machine: RECEIVED -> QUEUED -> DISPATCHED -> RUNNING -> COMPLETED | ERROR | CANCELLED. A job can
 * fail or be cancelled from any unfinished state; QUEUED may repeat (its position changes); nothing leaves a
 * final state.
 */
import { TERMINAL, type JobStatus } from "tsight/protocol";

/** The states each state may move to. */
export const NEXT: Readonly<Record<JobStatus, readonly JobStatus[]>> = {
  RECEIVED: ["QUEUED", "ERROR", "CANCELLED"],
  QUEUED: ["QUEUED", "DISPATCHED", "ERROR", "CANCELLED"],
  DISPATCHED: ["RUNNING", "ERROR", "CANCELLED"],
  RUNNING: ["COMPLETED", "ERROR", "CANCELLED"],
  COMPLETED: [],
  ERROR: [],
  CANCELLED: [],
};

export const ACTIVE: readonly JobStatus[] = ["RECEIVED", "QUEUED", "DISPATCHED", "RUNNING"];

export function canMove(from: JobStatus, to: JobStatus): boolean {
  return NEXT[from].includes(to);
}

export function isTerminal(status: JobStatus): boolean {
  return TERMINAL.includes(status);
}
