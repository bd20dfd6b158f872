import { signOut } from "../auth";
import { Page } from "../components/ui";
import { useNow } from "../hooks";
import { useSession } from "../session";

export function SessionPage() {
  const { identity, user } = useSession();
  const now = useNow();
  const left = Math.max(0, Math.round((identity.expiresAt - now) / 1000));
  return (
    <Page title="Session">
      <dl className="fields">
        <dt>User</dt>
        <dd data-testid="username">{user?.username ?? "…"}</dd>
        <dt>Id</dt>
        <dd>
          <code>{identity.subject}</code>
        </dd>
        <dt>Kind</dt>
        <dd>{identity.kind}</dd>
        <dt>Scopes</dt>
        <dd>
          <ul className="plain">
            {identity.scopes.map((s) => (
              <li key={s}>
                <code>{s}</code>
              </li>
            ))}
          </ul>
        </dd>
        <dt>Access token</dt>
        <dd data-testid="expires">expires in {left} s; renewed from the refresh token before then (held in this tab's memory only)</dd>
      </dl>
      <p>Signing out revokes this login at sso: its refresh token and every access token issued from it.</p>
      <button type="button" onClick={() => void signOut()}>
        Sign out
      </button>
    </Page>
  );
}
