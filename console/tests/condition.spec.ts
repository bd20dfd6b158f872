// The console's rule conditions parse as the CLI's do: both are held to the same cases.
import { readFileSync } from "node:fs";
import { expect, test } from "@playwright/test";
import { comparisonText, parseCondition } from "../src/condition";

interface Cases {
  valid: Array<{ text: string; metric: string; op: string; threshold: number }>;
  invalid: string[];
}
const cases = JSON.parse(readFileSync(new URL("../../testdata/rule-conditions.json", import.meta.url), "utf8")) as Cases;

test("conditions parse as the CLI parses them", () => {
  for (const c of cases.valid) {
    const parsed = parseCondition(c.text);
    expect(parsed, c.text).not.toHaveProperty("error");
    if ("error" in parsed) continue;
    expect({ metric: parsed.metric, op: comparisonText(parsed.comparison), threshold: parsed.threshold }, c.text).toEqual({
      metric: c.metric,
      op: c.op,
      threshold: c.threshold,
    });
  }
  for (const text of cases.invalid) {
    const parsed = parseCondition(text);
    expect(parsed, text).toHaveProperty("error");
  }
});
