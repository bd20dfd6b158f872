// Sending a command and following it: the one just sent is watched (ControlService.WatchCommand),
// the list is read again every two seconds.

import { useState, type FormEvent } from "react";
import { Link } from "wouter";
import { control } from "../api";
import { CommandState, type Command } from "../gen/sipmba/v1/control_pb";
import { FINAL_COMMAND_STATES, commandStateName, parseDuration, pbDuration, short, time } from "../format";
import { useAction, useStream } from "../hooks";
import { Problem, StateBadge } from "./ui";

export function SendCommand(props: {
  things: Array<{ id: string; name: string }>;
  thing?: string;
  onSent: (command: Command) => void;
}) {
  const [thing, setThing] = useState(props.thing ?? "");
  const [name, setName] = useState("");
  const [payload, setPayload] = useState("");
  const [ttl, setTtl] = useState("");
  const { act, busy, problem, setProblem } = useAction();
  async function submit(e: FormEvent) {
    e.preventDefault();
    const target = props.thing ?? thing;
    if (!target) return setProblem("Choose the thing to command.");
    let ttlMs: number | null = null;
    if (ttl.trim()) {
      ttlMs = parseDuration(ttl);
      if (ttlMs === null) return setProblem(`Time to live ${JSON.stringify(ttl)}: write it like 30s, 15m, 2h or 1d.`);
    }
    await act(async () => {
      const command = await control.sendCommand({
        thing: { value: target },
        name: name.trim(),
        payload: new TextEncoder().encode(payload),
        ttl: ttlMs === null ? undefined : pbDuration(ttlMs),
        idempotencyKey: crypto.randomUUID(),
      });
      props.onSent(command);
    });
  }
  return (
    <form className="inline" onSubmit={submit} aria-label="Send a command">
      {!props.thing && (
        <div>
          <label htmlFor="command-thing">Thing</label>
          <select id="command-thing" value={thing} onChange={(e) => setThing(e.target.value)} required>
            <option value="">choose…</option>
            {props.things.map((t) => (
              <option key={t.id} value={t.id}>
                {t.name}
              </option>
            ))}
          </select>
        </div>
      )}
      <div>
        <label htmlFor="command-name">Command</label>
        <input id="command-name" required placeholder="fan.on" value={name} onChange={(e) => setName(e.target.value)} />
      </div>
      <div>
        <label htmlFor="command-payload">Payload</label>
        <input id="command-payload" value={payload} onChange={(e) => setPayload(e.target.value)} />
      </div>
      <div>
        <label htmlFor="command-ttl">Time to live</label>
        <input id="command-ttl" placeholder="default" size={8} value={ttl} onChange={(e) => setTtl(e.target.value)} />
      </div>
      <button type="submit" disabled={busy}>
        Send
      </button>
      <Problem error={problem} />
    </form>
  );
}

/** The command just sent, its state followed live until it is final. */
export function Watched({ command, onChange }: { command: Command; onChange?: () => void }) {
  const [current, setCurrent] = useState(command);
  const [trail, setTrail] = useState<CommandState[]>([command.state]);
  const id = command.id!.value;
  const error = useStream(
    (signal) => control.watchCommand({ id: command.id }, { signal }),
    (c) => {
      setCurrent(c);
      setTrail((t) => (t[t.length - 1] === c.state ? t : [...t, c.state]));
      onChange?.();
    },
    [id],
  );
  const final = FINAL_COMMAND_STATES.includes(current.state);
  return (
    <section className="watched" aria-live="polite" data-command={id} data-state={commandStateName(current.state)}>
      <h3>
        {current.name} <span className="muted">{short(id)}</span>
      </h3>
      <ol className="trail" aria-label="States so far">
        {trail.map((s, i) => (
          <li key={i}>
            <StateBadge state={commandStateName(s)} />
          </li>
        ))}
      </ol>
      {current.detail && <p>{current.detail}</p>}
      {!final && <p className="muted">Waiting for the thing's next wake…</p>}
      {!final && <Problem error={error} />}
    </section>
  );
}

export function CommandTable(props: { commands: Command[]; names: Map<string, string> }) {
  return (
    <div className="table">
      <table>
        <caption className="sr-only">Commands</caption>
        <thead>
          <tr>
            <th scope="col">Command</th>
            <th scope="col">Thing</th>
            <th scope="col">State</th>
            <th scope="col">Sent</th>
            <th scope="col">Updated</th>
            <th scope="col">Detail</th>
          </tr>
        </thead>
        <tbody>
          {props.commands.map((c) => (
            <tr key={c.id!.value} data-command={c.id!.value}>
              <th scope="row">{c.name}</th>
              <td>
                <Link href={`/things/${c.thing!.value}`}>{props.names.get(c.thing!.value) ?? short(c.thing!.value)}</Link>
              </td>
              <td>
                <StateBadge state={commandStateName(c.state)} />
              </td>
              <td>{time(c.created)}</td>
              <td>{time(c.updated)}</td>
              <td>{c.detail}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
