// How the console writes ids, times and states.

import { create } from "@bufbuild/protobuf";
import { DurationSchema, timestampDate, type Duration, type Timestamp } from "@bufbuild/protobuf/wkt";
import { ObjectState } from "./gen/sipmba/v1/common_pb";
import { CommandState } from "./gen/sipmba/v1/control_pb";

export function date(ts: Timestamp | undefined): Date | null {
  return ts ? timestampDate(ts) : null;
}

/** "12 s ago", "3 min ago", "5 h ago", "2 d ago". */
export function ago(when: Date | null, now = Date.now()): string {
  if (!when) return "never";
  const s = Math.max(0, Math.round((now - when.getTime()) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

export function time(ts: Timestamp | undefined): string {
  const d = date(ts);
  return d ? d.toLocaleString() : "—";
}

export function stateName(state: ObjectState): string {
  return state === ObjectState.DISABLED ? "disabled" : state === ObjectState.ACTIVE ? "active" : "unknown";
}

export function commandStateName(state: CommandState): string {
  return CommandState[state] ?? "UNSPECIFIED";
}

export const FINAL_COMMAND_STATES = [CommandState.ACKED, CommandState.FAILED, CommandState.EXPIRED];

/** `key=value` pairs separated by commas or spaces; a bare `key` has an empty value. */
export function parseLabels(text: string): Record<string, string> | { error: string } {
  const labels: Record<string, string> = {};
  for (const part of text.split(/[,\s]+/).filter(Boolean)) {
    const [key, ...rest] = part.split("=");
    if (!key) return { error: `${JSON.stringify(part)}: a label is key=value` };
    labels[key] = rest.join("=");
  }
  return labels;
}

export function labelText(labels: Record<string, string>): string[] {
  return Object.entries(labels)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => (v ? `${k}=${v}` : k));
}

export function short(id: string | undefined): string {
  return id ? id.slice(0, 8) : "—";
}

/** "30s", "15m", "2h", "1d" → milliseconds; null when not such a duration. */
export function parseDuration(text: string): number | null {
  const m = /^\s*(\d+)\s*(s|m|h|d)\s*$/.exec(text);
  if (!m) return null;
  const unit = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as "s" | "m" | "h" | "d"];
  return Number(m[1]) * unit;
}

/** Milliseconds as a protobuf Duration of whole seconds. */
export function pbDuration(ms: number): Duration {
  return create(DurationSchema, { seconds: BigInt(Math.round(ms / 1000)) });
}
