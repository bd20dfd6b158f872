// The rule condition language the CLI's `--when` speaks: `<metric> <op> <number>`, op one of
// > >= < <= == != (testdata/rule-conditions.json holds the cases both parsers pass).

import { Comparison } from "./gen/sipmba/v1/processing_pb";

export const OPERATORS: ReadonlyArray<[string, Comparison]> = [
  [">=", Comparison.GE],
  ["<=", Comparison.LE],
  ["==", Comparison.EQ],
  ["!=", Comparison.NE],
  [">", Comparison.GT],
  ["<", Comparison.LT],
];

export interface Condition {
  metric: string;
  comparison: Comparison;
  threshold: number;
}

const NUMBER = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

export function conditionError(text: string): string {
  return `${JSON.stringify(text)}: expected \`<metric> <op> <number>\` with op one of > >= < <= == !=, e.g. "temperature > 30"`;
}

/** Parses "temperature > 30"; the first operator in the text wins, the longer one at a tie. */
export function parseCondition(text: string): Condition | { error: string } {
  let best: { at: number; op: string; comparison: Comparison } | null = null;
  for (const [op, comparison] of OPERATORS) {
    const at = text.indexOf(op);
    if (at < 0) continue;
    if (!best || at < best.at || (at === best.at && op.length > best.op.length)) {
      best = { at, op, comparison };
    }
  }
  if (!best) return { error: conditionError(text) };
  const metric = text.slice(0, best.at).trim();
  const number = text.slice(best.at + best.op.length).trim();
  const threshold = Number(number);
  if (!metric || !NUMBER.test(number) || !Number.isFinite(threshold)) {
    return { error: conditionError(text) };
  }
  return { metric, comparison: best.comparison, threshold };
}

export function comparisonText(c: Comparison): string {
  return OPERATORS.find(([, k]) => k === c)?.[0] ?? "?";
}
