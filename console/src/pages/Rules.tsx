import { useState, type FormEvent } from "react";
import { create } from "@bufbuild/protobuf";
import { FieldMaskSchema, type Duration } from "@bufbuild/protobuf/wkt";
import { channels, describe, rules } from "../api";
import { Confirm, Page, Problem, StateBadge } from "../components/ui";
import type { Rule } from "../gen/sipmba/v1/processing_pb";
import { comparisonText, parseCondition } from "../condition";
import { parseDuration, parseLabels, pbDuration, short, time } from "../format";
import { useAction, usePoll } from "../hooks";
import { formatValue } from "../components/Plot";
import { useSession } from "../session";
import { reachableThings } from "./Things";

async function allRules(signal: AbortSignal) {
  const all: Rule[] = [];
  let token = "";
  do {
    const page = await rules.listRules({ page: { pageSize: 100, pageToken: token } }, { signal });
    all.push(...page.rules);
    token = page.nextPageToken;
  } while (token);
  return all;
}

export function RulesPage() {
  const { identity } = useSession();
  const list = usePoll(allRules, [], 5_000);
  const { act, problem } = useAction(list.reload);
  const known = usePoll((signal) => reachableThings(identity.subject, signal), [identity.subject], 30_000);
  const chans = usePoll(async (signal) => (await channels.listChannels({}, { signal })).channels, [], 30_000);
  const [open, setOpen] = useState<string | null>(null);
  const [deleting, setDeleting] = useState<Rule | null>(null);
  const names = new Map((known.data?.things ?? []).map((t) => [t.id!.value, t.name]));
  const channelNames = new Map((chans.data ?? []).map((c) => [c.id!.value, c.name]));

  function selector(r: Rule): string {
    const s = r.selector;
    if (s.case === "thing") return `thing ${names.get(s.value.value) ?? short(s.value.value)}`;
    if (s.case === "channel") return `channel ${channelNames.get(s.value.value) ?? short(s.value.value)}`;
    if (s.case === "labels") return `labels ${s.value.selectors.map((l) => (l.value ? `${l.key}=${l.value}` : l.key)).join(",")}`;
    return "—";
  }

  return (
    <Page title="Rules">
      <CreateRule
        things={(known.data?.things ?? []).map((t) => ({ id: t.id!.value, name: t.name }))}
        channels={(chans.data ?? []).map((c) => ({ id: c.id!.value, name: c.name }))}
        onCreated={list.reload}
      />
      <Problem error={list.error ?? problem} />
      <div className="table">
        <table>
          <caption className="sr-only">Rules</caption>
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Watches</th>
              <th scope="col">When</th>
              <th scope="col">Then</th>
              <th scope="col">Enabled</th>
              <th scope="col">Actions</th>
            </tr>
          </thead>
          <tbody>
            {(list.data ?? []).map((r) => (
              <tr key={r.id!.value} data-rule={r.name}>
                <th scope="row">{r.name}</th>
                <td>{selector(r)}</td>
                <td>
                  <code>
                    {r.metric} {comparisonText(r.comparison)} {r.threshold}
                  </code>
                </td>
                <td>
                  <code>{r.action?.name}</code>
                </td>
                <td>
                  <StateBadge state={r.enabled ? "enabled" : "disabled"} />
                </td>
                <td className="actions">
                  <button
                    type="button"
                    onClick={() =>
                      act(() =>
                        rules.updateRule({
                          rule: { id: r.id, enabled: !r.enabled },
                          updateMask: create(FieldMaskSchema, { paths: ["enabled"] }),
                        }),
                      )
                    }
                  >
                    {r.enabled ? "Disable" : "Enable"}
                  </button>
                  <button type="button" aria-expanded={open === r.id!.value} onClick={() => setOpen(open === r.id!.value ? null : r.id!.value)}>
                    Firings
                  </button>
                  <button type="button" className="danger" onClick={() => setDeleting(r)}>
                    Delete
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {list.data?.length === 0 && <p>No rule yet.</p>}
      {open && <Firings rule={open} name={list.data?.find((r) => r.id!.value === open)?.name ?? ""} names={names} />}
      {deleting && (
        <Confirm
          title={`Delete ${deleting.name}?`}
          confirm="Delete the rule"
          onConfirm={() => act(() => rules.deleteRule({ id: deleting.id }))}
          onClose={() => setDeleting(null)}
        >
          <p>The rule and its firings are deleted; commands it already sent stay.</p>
        </Confirm>
      )}
    </Page>
  );
}

function Firings(props: { rule: string; name: string; names: Map<string, string> }) {
  const firings = usePoll(
    async (signal) => (await rules.listFirings({ rule: { value: props.rule }, page: { pageSize: 50 } }, { signal })).firings,
    [props.rule],
    3_000,
  );
  return (
    <section aria-labelledby="firings-title" data-firings={props.name}>
      <h2 id="firings-title">Firings of {props.name}</h2>
      <Problem error={firings.error} />
      {firings.data?.length === 0 && <p>It has not fired yet.</p>}
      <ul className="plain">
        {(firings.data ?? []).map((f) => (
          <li key={`${f.thing?.value}-${f.seq}`} className="firing">
            {time(f.firedAt)}: {props.names.get(f.thing?.value ?? "") ?? short(f.thing?.value)} at {formatValue(f.value)}
            {f.command && <> — command {short(f.command.value)}</>}
            {f.detail && <> — {f.detail}</>}
          </li>
        ))}
      </ul>
    </section>
  );
}

function CreateRule(props: {
  things: Array<{ id: string; name: string }>;
  channels: Array<{ id: string; name: string }>;
  onCreated: () => void;
}) {
  const [form, setForm] = useState({ name: "", watch: "", labels: "", when: "", then: "", payload: "", hold: "", cooldown: "", disabled: false });
  const [problem, setProblem] = useState<string | null>(null);
  const set = (key: keyof typeof form) => (e: { target: HTMLInputElement | HTMLSelectElement }) =>
    setForm({ ...form, [key]: e.target instanceof HTMLInputElement && e.target.type === "checkbox" ? e.target.checked : e.target.value });

  async function submit(e: FormEvent) {
    e.preventDefault();
    const condition = parseCondition(form.when);
    if ("error" in condition) return setProblem(`When ${condition.error}`);
    const durations: Record<"hold" | "cooldown", Duration | undefined> = { hold: undefined, cooldown: undefined };
    for (const key of ["hold", "cooldown"] as const) {
      if (!form[key].trim()) continue;
      const ms = parseDuration(form[key]);
      if (ms === null) return setProblem(`${key === "hold" ? "Hold" : "Cooldown"} ${JSON.stringify(form[key])}: write it like 30s, 5m, 2h or 1d.`);
      durations[key] = pbDuration(ms);
    }
    let selector;
    if (form.watch.startsWith("thing:")) selector = { case: "thing" as const, value: { value: form.watch.slice(6) } };
    else if (form.watch.startsWith("channel:")) selector = { case: "channel" as const, value: { value: form.watch.slice(8) } };
    else if (form.watch === "labels") {
      const labels = parseLabels(form.labels);
      if ("error" in labels || Object.keys(labels).length === 0) return setProblem("Labels: write them as key=value (or key), separated by commas.");
      selector = {
        case: "labels" as const,
        value: { selectors: Object.entries(labels as Record<string, string>).map(([key, value]) => ({ key, value: value || undefined })) },
      };
    } else return setProblem("Say which things the rule watches.");
    setProblem(null);
    try {
      await rules.createRule({
        rule: {
          name: form.name.trim(),
          selector,
          metric: condition.metric,
          comparison: condition.comparison,
          threshold: condition.threshold,
          hold: durations.hold,
          cooldown: durations.cooldown,
          action: { name: form.then.trim(), payload: new TextEncoder().encode(form.payload) },
          enabled: !form.disabled,
        },
      });
      setForm({ ...form, name: "", when: "", then: "", payload: "" });
      props.onCreated();
    } catch (err) {
      setProblem(describe(err));
    }
  }

  return (
    <form className="inline wrap" onSubmit={submit} aria-label="Create a rule">
      <div>
        <label htmlFor="rule-name">New rule</label>
        <input id="rule-name" required placeholder="too-warm" value={form.name} onChange={set("name")} />
      </div>
      <div>
        <label htmlFor="rule-watch">Watches</label>
        <select id="rule-watch" required value={form.watch} onChange={set("watch")}>
          <option value="">choose…</option>
          <optgroup label="A thing">
            {props.things.map((t) => (
              <option key={t.id} value={`thing:${t.id}`}>
                {t.name}
              </option>
            ))}
          </optgroup>
          <optgroup label="A channel's things">
            {props.channels.map((c) => (
              <option key={c.id} value={`channel:${c.id}`}>
                {c.name}
              </option>
            ))}
          </optgroup>
          <option value="labels">Things with labels…</option>
        </select>
      </div>
      {form.watch === "labels" && (
        <div>
          <label htmlFor="rule-labels">Labels</label>
          <input id="rule-labels" placeholder="site=north" value={form.labels} onChange={set("labels")} />
        </div>
      )}
      <div>
        <label htmlFor="rule-when">When</label>
        <input id="rule-when" required placeholder="temperature > 27" value={form.when} onChange={set("when")} />
      </div>
      <div>
        <label htmlFor="rule-then">Then send</label>
        <input id="rule-then" required placeholder="fan.on" value={form.then} onChange={set("then")} />
      </div>
      <div>
        <label htmlFor="rule-payload">Payload</label>
        <input id="rule-payload" value={form.payload} onChange={set("payload")} />
      </div>
      <div>
        <label htmlFor="rule-hold">Hold</label>
        <input id="rule-hold" size={6} placeholder="0s" value={form.hold} onChange={set("hold")} />
      </div>
      <div>
        <label htmlFor="rule-cooldown">Cooldown</label>
        <input id="rule-cooldown" size={6} placeholder="5m" value={form.cooldown} onChange={set("cooldown")} />
      </div>
      <div className="check">
        <input id="rule-disabled" type="checkbox" checked={form.disabled} onChange={set("disabled")} />
        <label htmlFor="rule-disabled">Create it disabled</label>
      </div>
      <button type="submit">Create</button>
      <Problem error={problem} />
    </form>
  );
}
