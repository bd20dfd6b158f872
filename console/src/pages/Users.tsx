import { useState, type FormEvent } from "react";
import { accounts, describe, things, users } from "../api";
import { Confirm, Page, Problem, StateBadge } from "../components/ui";
import { ObjectState } from "../gen/sipmba/v1/common_pb";
import type { User } from "../gen/sipmba/v1/objects_pb";
import { stateName } from "../format";
import { useAction, usePoll } from "../hooks";
import { useSession } from "../session";

async function subtree(root: string, signal: AbortSignal) {
  const all: User[] = [];
  let token = "";
  do {
    const page = await users.listUsers({ root: { value: root }, page: { pageSize: 100, pageToken: token } }, { signal });
    all.push(...page.users);
    token = page.nextPageToken;
  } while (token && all.length < 10_000);
  return all;
}

/** Users in tree order: each followed by its children, by name. */
function treeOrder(list: User[], root: string): User[] {
  const children = new Map<string, User[]>();
  for (const u of list) {
    const parent = u.parent?.value ?? "";
    children.set(parent, [...(children.get(parent) ?? []), u]);
  }
  const out: User[] = [];
  const visit = (u: User) => {
    out.push(u);
    (children.get(u.id!.value) ?? []).sort((a, b) => a.username.localeCompare(b.username)).forEach(visit);
  };
  const top = list.find((u) => u.id!.value === root);
  if (top) visit(top);
  return out;
}

function below(list: User[], id: string): User[] {
  const found: User[] = [];
  const walk = (parent: string) =>
    list.filter((u) => u.parent?.value === parent).forEach((u) => (found.push(u), walk(u.id!.value)));
  walk(id);
  return found;
}

export function UsersPage() {
  const { identity } = useSession();
  const me = identity.subject;
  const list = usePoll((signal) => subtree(me, signal), [me], 10_000);
  const { act, problem, setProblem } = useAction(list.reload);
  const [disabling, setDisabling] = useState<{ user: User; users: User[]; things: number } | null>(null);
  const [passwordFor, setPasswordFor] = useState<User | null>(null);
  const ordered = treeOrder(list.data ?? [], me);
  const rootDepth = ordered[0]?.depth ?? 0;

  async function askDisable(user: User) {
    try {
      const owned = await things.listThings({ scope: { case: "subtree", value: { value: user.id!.value } }, page: { pageSize: 100 } });
      const count = owned.things.length + (owned.nextPageToken ? 1 : 0);
      setDisabling({ user, users: below(list.data ?? [], user.id!.value), things: count });
    } catch (e) {
      setProblem(describe(e));
    }
  }

  return (
    <Page title="Users">
      <CreateUser parents={ordered} me={me} onCreated={list.reload} />
      <Problem error={list.error ?? problem} />
      <ul className="tree" aria-label="Your users">
        {ordered.map((u) => (
          <li key={u.id!.value} style={{ paddingInlineStart: `${0.75 + (u.depth - rootDepth) * 1.25}rem` }} data-user={u.username}>
            <span className="name">{u.username}</span>
            <StateBadge state={stateName(u.effectiveState)} />
            {u.id!.value === me ? (
              <span className="muted">you</span>
            ) : (
              <span className="actions">
                <button type="button" onClick={() => setPasswordFor(u)}>
                  Set password
                </button>
                {u.state === ObjectState.DISABLED ? (
                  <button type="button" onClick={() => act(() => users.enableUser({ id: u.id, recursive: true }))}>
                    Enable
                  </button>
                ) : (
                  <button type="button" className="danger" onClick={() => void askDisable(u)}>
                    Disable
                  </button>
                )}
              </span>
            )}
          </li>
        ))}
      </ul>
      {disabling && (
        <Confirm
          title={`Disable ${disabling.user.username}?`}
          confirm={`Disable ${disabling.user.username}`}
          onConfirm={() => act(() => users.disableUser({ id: disabling.user.id }))}
          onClose={() => setDisabling(null)}
        >
          <p>
            This disables {disabling.user.username}
            {disabling.users.length > 0 && (
              <>
                {" "}and the {disabling.users.length} user{disabling.users.length === 1 ? "" : "s"} below (
                {disabling.users.map((u) => u.username).join(", ")})
              </>
            )}
            , and with them {disabling.things === 0 ? "no thing" : `${disabling.things}${disabling.things > 100 ? "+" : ""} thing${disabling.things === 1 ? "" : "s"}`}.
          </p>
          <p>Every token of those users and things stops working within a second; enabling them again later lets them sign in anew.</p>
        </Confirm>
      )}
      {passwordFor && <SetPassword user={passwordFor} onClose={() => setPasswordFor(null)} />}
    </Page>
  );
}

function PasswordFields(props: { value: string; onChange: (v: string) => void; again: string; onAgain: (v: string) => void; prefix: string }) {
  return (
    <>
      <div>
        <label htmlFor={`${props.prefix}-password`}>Password</label>
        <input id={`${props.prefix}-password`} type="password" autoComplete="new-password" required value={props.value} onChange={(e) => props.onChange(e.target.value)} />
      </div>
      <div>
        <label htmlFor={`${props.prefix}-again`}>Again</label>
        <input id={`${props.prefix}-again`} type="password" autoComplete="new-password" required value={props.again} onChange={(e) => props.onAgain(e.target.value)} />
      </div>
    </>
  );
}

function CreateUser(props: { parents: User[]; me: string; onCreated: () => void }) {
  const [username, setUsername] = useState("");
  const [parent, setParent] = useState("");
  const [password, setPassword] = useState("");
  const [again, setAgain] = useState("");
  const [problem, setProblem] = useState<string | null>(null);
  const [done, setDone] = useState<string | null>(null);
  async function submit(e: FormEvent) {
    e.preventDefault();
    if (password !== again) return setProblem("The two passwords differ.");
    setProblem(null);
    setDone(null);
    let created: User | null = null;
    try {
      created = await users.createUser({ username: username.trim(), parent: { value: parent || props.me } });
      await accounts.setUserPassword({ user: created.id, newPassword: password });
      setDone(`${created.username} is created and can sign in.`);
      setUsername("");
      setPassword("");
      setAgain("");
    } catch (err) {
      setProblem(
        created
          ? `${created.username} is created, but its password was refused: ${describe(err)}. Set it with “Set password”.`
          : describe(err),
      );
    }
    props.onCreated();
  }
  return (
    <form className="inline wrap" onSubmit={submit} aria-label="Create a user">
      <div>
        <label htmlFor="user-name">New user</label>
        <input id="user-name" required autoComplete="off" placeholder="carol" value={username} onChange={(e) => setUsername(e.target.value)} />
      </div>
      <div>
        <label htmlFor="user-parent">Below</label>
        <select id="user-parent" value={parent} onChange={(e) => setParent(e.target.value)}>
          {props.parents.map((u) => (
            <option key={u.id!.value} value={u.id!.value === props.me ? "" : u.id!.value}>
              {u.id!.value === props.me ? `${u.username} (you)` : u.username}
            </option>
          ))}
        </select>
      </div>
      <PasswordFields prefix="user" value={password} onChange={setPassword} again={again} onAgain={setAgain} />
      <button type="submit">Create</button>
      <Problem error={problem} />
      {done && <p role="status">{done}</p>}
    </form>
  );
}

function SetPassword(props: { user: User; onClose: () => void }) {
  const [password, setPassword] = useState("");
  const [again, setAgain] = useState("");
  const [problem, setProblem] = useState<string | null>(null);
  async function submit(e: FormEvent) {
    e.preventDefault();
    if (password !== again) return setProblem("The two passwords differ.");
    try {
      await accounts.setUserPassword({ user: props.user.id, newPassword: password });
      props.onClose();
    } catch (err) {
      setProblem(describe(err));
    }
  }
  return (
    <form className="inline wrap" onSubmit={submit} aria-label={`New password of ${props.user.username}`}>
      <strong>New password of {props.user.username}</strong>
      <PasswordFields prefix="reset" value={password} onChange={setPassword} again={again} onAgain={setAgain} />
      <button type="submit">Set it</button>
      <button type="button" onClick={props.onClose}>
        Cancel
      </button>
      <Problem error={problem} />
      <p className="muted">Setting a password signs the user out everywhere.</p>
    </form>
  );
}
