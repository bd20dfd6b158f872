import { useMemo, useState, type FormEvent } from "react";
import { Link } from "wouter";
import { accounts, presence, things } from "../api";
import { Online, Page, Problem, SecretDialog, StateBadge } from "../components/ui";
import { ObjectState } from "../gen/sipmba/v1/common_pb";
import type { Thing } from "../gen/sipmba/v1/objects_pb";
import type { ThingPresence } from "../gen/sipmba/v1/processing_pb";
import { ago, date, labelText, parseLabels, stateName } from "../format";
import { useAction, useNow, usePoll } from "../hooks";
import { useSession } from "../session";

/** Every thing the user reaches (its subtree's and those shared with it), 100 at a time. */
export async function reachableThings(me: string, signal?: AbortSignal) {
  const all: Thing[] = [];
  const shared = new Set<string>();
  let token = "";
  do {
    const page = await things.listThings(
      { scope: { case: "reachable", value: { value: me } }, page: { pageSize: 100, pageToken: token } },
      { signal },
    );
    all.push(...page.things);
    page.shared.forEach((id) => shared.add(id.value));
    token = page.nextPageToken;
  } while (token && all.length < 10_000);
  return { things: all, shared };
}

export function ThingsPage() {
  const { identity } = useSession();
  const now = useNow();
  const [filter, setFilter] = useState("");
  const [secret, setSecret] = useState<{ title: string; clientId: string; secret: string } | null>(null);
  const list = usePoll((signal) => reachableThings(identity.subject, signal), [identity.subject], 10_000);
  const { act, problem } = useAction(list.reload);
  const ids = useMemo(() => (list.data?.things ?? []).map((t) => t.id!.value), [list.data]);
  const seen = usePoll(
    async (signal) => {
      const map = new Map<string, ThingPresence>();
      for (let i = 0; i < ids.length; i += 100) {
        const chunk = ids.slice(i, i + 100).map((value) => ({ value }));
        const answer = await presence.getPresence({ things: chunk }, { signal });
        answer.presences.forEach((p) => map.set(p.thing!.value, p));
      }
      return map;
    },
    [ids.join(",")],
    2_000,
  );

  const shown = (list.data?.things ?? []).filter((t) => matches(t, filter));

  return (
    <Page title="Things">
      <CreateThing onCreated={(title, clientId, s) => (setSecret({ title, clientId, secret: s }), list.reload())} />
      <div className="filter">
        <label htmlFor="filter">Filter</label>
        <input
          id="filter"
          type="search"
          placeholder="name, or label key=value"
          value={filter}
          onChange={(e) => setFilter(e.target.value)}
        />
      </div>
      <Problem error={list.error ?? seen.error ?? problem} />
      <div className="table">
        <table>
          <caption className="sr-only">Things</caption>
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Presence</th>
              <th scope="col">Last seen</th>
              <th scope="col">Labels</th>
              <th scope="col">State</th>
              <th scope="col">Actions</th>
            </tr>
          </thead>
          <tbody>
            {shown.map((t) => {
              const id = t.id!.value;
              const p = seen.data?.get(id);
              const shared = list.data?.shared.has(id);
              return (
                <tr key={id} data-thing={t.name}>
                  <th scope="row">
                    <Link href={`/things/${id}`}>{t.name}</Link>
                    {shared && <span className="tag">shared</span>}
                  </th>
                  <td data-testid="presence">
                    <Online online={p?.online} />
                  </td>
                  <td>{ago(date(p?.lastSeen), now)}</td>
                  <td>
                    {labelText(t.labels).map((l) => (
                      <span className="tag" key={l}>
                        {l}
                      </span>
                    ))}
                  </td>
                  <td>
                    <StateBadge state={stateName(t.effectiveState)} />
                  </td>
                  <td className="actions">
                    {!shared &&
                      (t.state === ObjectState.DISABLED ? (
                        <button type="button" onClick={() => act(() => things.enableThing({ id: t.id }))}>
                          Enable
                        </button>
                      ) : (
                        <button type="button" onClick={() => act(() => things.disableThing({ id: t.id }))}>
                          Disable
                        </button>
                      ))}
                    {!shared && (
                      <button
                        type="button"
                        onClick={() =>
                          act(async () => {
                            const r = await accounts.rotateThingSecret({ thing: t.id });
                            setSecret({ title: `New secret of ${t.name}`, clientId: r.clientId, secret: r.clientSecret });
                          })
                        }
                      >
                        Rotate secret
                      </button>
                    )}
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </div>
      {list.data && shown.length === 0 && <p>No thing matches.</p>}
      {secret && <SecretDialog {...secret} onClose={() => setSecret(null)} />}
    </Page>
  );
}

function matches(t: Thing, filter: string): boolean {
  const f = filter.trim();
  if (!f) return true;
  if (f.includes("=")) {
    const [k, v] = f.split("=", 2) as [string, string];
    return t.labels[k.trim()] === v.trim();
  }
  return t.name.includes(f) || Object.keys(t.labels).some((k) => k === f);
}

function CreateThing(props: { onCreated: (title: string, clientId: string, secret: string) => void }) {
  const [name, setName] = useState("");
  const [labels, setLabels] = useState("");
  const { act, busy, problem, setProblem } = useAction();
  async function submit(e: FormEvent) {
    e.preventDefault();
    const parsed = parseLabels(labels);
    if ("error" in parsed) return setProblem(parsed.error as string);
    await act(async () => {
      const thing = await things.createThing({ name: name.trim(), labels: parsed as Record<string, string> });
      const issued = await accounts.issueThingSecret({ thing: thing.id });
      setName("");
      setLabels("");
      props.onCreated(`${thing.name} is created`, issued.clientId, issued.clientSecret);
    });
  }
  return (
    <form className="inline" onSubmit={submit} aria-label="Create a thing">
      <div>
        <label htmlFor="thing-name">New thing</label>
        <input id="thing-name" required value={name} onChange={(e) => setName(e.target.value)} placeholder="name" />
      </div>
      <div>
        <label htmlFor="thing-labels">Labels</label>
        <input id="thing-labels" value={labels} onChange={(e) => setLabels(e.target.value)} placeholder="site=north" />
      </div>
      <button type="submit" disabled={busy}>
        Create
      </button>
      <Problem error={problem} />
    </form>
  );
}
