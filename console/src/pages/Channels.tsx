import { useState, type FormEvent } from "react";
import { timestampFromMs, type Timestamp } from "@bufbuild/protobuf/wkt";
import { channels, users } from "../api";
import { Confirm, Page, Problem } from "../components/ui";
import { ChannelPermission } from "../gen/sipmba/v1/common_pb";
import type { Channel, User } from "../gen/sipmba/v1/objects_pb";
import { parseDuration, short, time } from "../format";
import { useAction, usePoll } from "../hooks";
import { useSession } from "../session";
import { reachableThings } from "./Things";

const PERMISSIONS: Array<[ChannelPermission, string]> = [
  [ChannelPermission.READ_TELEMETRY, "read telemetry"],
  [ChannelPermission.SEND_COMMANDS, "send commands"],
];

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function ChannelsPage() {
  const { identity } = useSession();
  const me = identity.subject;
  const list = usePoll(async (signal) => (await channels.listChannels({ page: { pageSize: 100 } }, { signal })).channels, [], 10_000);
  const { act, problem } = useAction(list.reload);
  const known = usePoll((signal) => reachableThings(me, signal), [me], 30_000);
  const tree = usePoll(async (signal) => (await users.listUsers({ root: { value: me }, page: { pageSize: 100 } }, { signal })).users, [me], 30_000);
  const [name, setName] = useState("");
  const [deleting, setDeleting] = useState<Channel | null>(null);
  const thingNames = new Map((known.data?.things ?? []).map((t) => [t.id!.value, t.name]));
  const userNames = new Map((tree.data ?? []).map((u) => [u.id!.value, u.username]));

  async function submit(e: FormEvent) {
    e.preventDefault();
    if (await act(() => channels.createChannel({ name: name.trim() }))) setName("");
  }

  return (
    <Page title="Channels">
      <form className="inline" onSubmit={submit} aria-label="Create a channel">
        <div>
          <label htmlFor="channel-name">New channel</label>
          <input id="channel-name" required placeholder="greenhouse" value={name} onChange={(e) => setName(e.target.value)} />
        </div>
        <button type="submit">Create</button>
      </form>
      <Problem error={list.error ?? problem} />
      {list.data?.length === 0 && <p>No channel yet. A channel shares things with users outside your tree, for a time.</p>}
      {(list.data ?? []).map((c) => (
        <section key={c.id!.value} className="channel" aria-labelledby={`ch-${c.id!.value}`} data-channel={c.name}>
          <div className="heading">
            <h2 id={`ch-${c.id!.value}`}>{c.name}</h2>
            <button type="button" className="danger" onClick={() => setDeleting(c)}>
              Delete
            </button>
          </div>
          <h3>Things</h3>
          <ul className="plain">
            {c.things.map((t) => (
              <li key={t.value}>
                {thingNames.get(t.value) ?? short(t.value)}{" "}
                <button type="button" onClick={() => act(() => channels.disconnectThing({ channel: c.id, thing: t }))}>
                  Disconnect
                </button>
              </li>
            ))}
          </ul>
          <Connect channel={c} things={(known.data?.things ?? []).filter((t) => !c.things.some((x) => x.value === t.id!.value)).map((t) => ({ id: t.id!.value, name: t.name }))} act={act} />
          <h3>Grants</h3>
          <ul className="plain">
            {c.grants.map((g) => (
              <li key={g.grantee!.value}>
                {userNames.get(g.grantee!.value) ?? g.grantee!.value}:{" "}
                {g.permissions.map((p) => PERMISSIONS.find(([k]) => k === p)?.[1] ?? "?").join(", ")}
                {g.expires ? `, until ${time(g.expires)}` : ", without end"}{" "}
                <button type="button" onClick={() => act(() => channels.revokeGrant({ channel: c.id, grantee: g.grantee }))}>
                  Revoke
                </button>
              </li>
            ))}
          </ul>
          <Grant channel={c} users={tree.data ?? []} act={act} />
        </section>
      ))}
      {deleting && (
        <Confirm
          title={`Delete ${deleting.name}?`}
          confirm="Delete the channel"
          onConfirm={() => act(() => channels.deleteChannel({ id: deleting.id }))}
          onClose={() => setDeleting(null)}
        >
          <p>Every grant on it ends at once: its grantees stop reaching its things.</p>
        </Confirm>
      )}
    </Page>
  );
}

function Connect(props: { channel: Channel; things: Array<{ id: string; name: string }>; act: (f: () => Promise<unknown>) => Promise<boolean> }) {
  const [thing, setThing] = useState("");
  const id = `connect-${props.channel.id!.value}`;
  return (
    <form
      className="inline"
      aria-label={`Connect a thing to ${props.channel.name}`}
      onSubmit={async (e) => {
        e.preventDefault();
        if (thing && (await props.act(() => channels.connectThing({ channel: props.channel.id, thing: { value: thing } })))) setThing("");
      }}
    >
      <div>
        <label htmlFor={id}>Connect</label>
        <select id={id} value={thing} onChange={(e) => setThing(e.target.value)} required>
          <option value="">choose a thing…</option>
          {props.things.map((t) => (
            <option key={t.id} value={t.id}>
              {t.name}
            </option>
          ))}
        </select>
      </div>
      <button type="submit">Connect</button>
    </form>
  );
}

function Grant(props: { channel: Channel; users: User[]; act: (f: () => Promise<unknown>) => Promise<boolean> }) {
  const [grantee, setGrantee] = useState("");
  const [read, setRead] = useState(true);
  const [send, setSend] = useState(false);
  const [expires, setExpires] = useState("24h");
  const [problem, setProblem] = useState<string | null>(null);
  const prefix = `grant-${props.channel.id!.value}`;
  async function submit(e: FormEvent) {
    e.preventDefault();
    const text = grantee.trim();
    const user = UUID.test(text) ? text : props.users.find((u) => u.username === text)?.id?.value;
    if (!user) return setProblem(`No user ${JSON.stringify(text)} in your tree: give a user outside it by id.`);
    const permissions = [read && ChannelPermission.READ_TELEMETRY, send && ChannelPermission.SEND_COMMANDS].filter(
      (p): p is ChannelPermission => p !== false,
    );
    if (permissions.length === 0) return setProblem("Choose at least one permission.");
    let until: Timestamp | undefined;
    if (expires.trim()) {
      const ms = parseDuration(expires);
      if (ms === null) return setProblem(`Expires in ${JSON.stringify(expires)}: write it like 30m, 24h or 7d.`);
      until = timestampFromMs(Date.now() + ms);
    }
    setProblem(null);
    if (await props.act(() => channels.grantAccess({ channel: props.channel.id, grantee: { value: user }, permissions, expires: until }))) setGrantee("");
  }
  return (
    <form className="inline wrap" onSubmit={submit} aria-label={`Grant access to ${props.channel.name}`}>
      <div>
        <label htmlFor={`${prefix}-user`}>Grant to</label>
        <input id={`${prefix}-user`} required placeholder="user name or id" value={grantee} onChange={(e) => setGrantee(e.target.value)} />
      </div>
      <div className="check">
        <input id={`${prefix}-read`} type="checkbox" checked={read} onChange={(e) => setRead(e.target.checked)} />
        <label htmlFor={`${prefix}-read`}>read telemetry</label>
      </div>
      <div className="check">
        <input id={`${prefix}-send`} type="checkbox" checked={send} onChange={(e) => setSend(e.target.checked)} />
        <label htmlFor={`${prefix}-send`}>send commands</label>
      </div>
      <div>
        <label htmlFor={`${prefix}-expires`}>Expires in</label>
        <input id={`${prefix}-expires`} size={6} value={expires} onChange={(e) => setExpires(e.target.value)} />
      </div>
      <button type="submit">Grant</button>
      <Problem error={problem} />
    </form>
  );
}
