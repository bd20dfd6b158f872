import { useState } from "react";
import { control } from "../api";
import { CommandTable, SendCommand, Watched } from "../components/Commands";
import { Page, Problem } from "../components/ui";
import { CommandState, type Command } from "../gen/sipmba/v1/control_pb";
import { usePoll } from "../hooks";
import { useSession } from "../session";
import { reachableThings } from "./Things";

const STATES = [CommandState.QUEUED, CommandState.DELIVERED, CommandState.ACKED, CommandState.FAILED, CommandState.EXPIRED];

export function CommandsPage() {
  const { identity } = useSession();
  const [states, setStates] = useState<CommandState[]>([]);
  const [sent, setSent] = useState<Command | null>(null);
  const known = usePoll((signal) => reachableThings(identity.subject, signal), [identity.subject], 30_000);
  const list = usePoll(
    async (signal) => (await control.listCommands({ states, page: { pageSize: 100 } }, { signal })).commands,
    [states.join(","), sent?.id?.value],
    2_000,
  );
  const choices = (known.data?.things ?? []).map((t) => ({ id: t.id!.value, name: t.name }));
  const names = new Map(choices.map((t) => [t.id, t.name]));
  return (
    <Page title="Commands">
      <SendCommand things={choices} onSent={setSent} />
      {sent && <Watched key={sent.id!.value} command={sent} onChange={list.reload} />}
      <fieldset className="states">
        <legend>Show</legend>
        {STATES.map((s) => (
          <label key={s}>
            <input
              type="checkbox"
              checked={states.includes(s)}
              onChange={(e) => setStates((old) => (e.target.checked ? [...old, s] : old.filter((x) => x !== s)))}
            />{" "}
            {CommandState[s]}
          </label>
        ))}
        <span className="muted">{states.length === 0 ? "every state" : ""}</span>
      </fieldset>
      <Problem error={list.error ?? known.error} />
      <CommandTable commands={list.data ?? []} names={names} />
    </Page>
  );
}
