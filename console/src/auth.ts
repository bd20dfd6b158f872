// Signing in: the OAuth 2.0 authorization code grant with PKCE (RFC 7636, S256) against the sso
// this page is served with, as the public client `sipmba-console`. Tokens live in this module's
// memory only (never in storage or a cookie): a reload signs in again. The refresh token is
// rotated at every refresh, as sso requires; signing out revokes it, and with it every access
// token of the login (RFC 7009).

export const CLIENT_ID = "sipmba-console";

/** What survives the trip to the login page and back (not a token: the PKCE verifier and state). */
const PENDING_KEY = "sipmba.console.sign-in";

/** The endpoints sso advertises (RFC 8414). */
interface Metadata {
  authorization_endpoint: string;
  token_endpoint: string;
  revocation_endpoint: string;
}

interface Pending {
  state: string;
  verifier: string;
  returnTo: string;
}

interface Tokens {
  access: string;
  refresh?: string;
  /** Milliseconds since the epoch. */
  expiresAt: number;
}

/** The signed-in principal, as its access token says (sso verified it; the services verify it again). */
export interface Identity {
  subject: string;
  kind: string;
  scopes: string[];
  expiresAt: number;
}

/** Why there is no session, for the page that offers to sign in. */
export type SignedOut =
  | { reason: "new" }
  | { reason: "signed-out" }
  | { reason: "expired" }
  | { reason: "refused"; message: string };

let tokens: Tokens | null = null;
let refreshing: Promise<void> | null = null;
let refreshTimer: number | undefined;
let metadata: Promise<Metadata> | null = null;
const listeners = new Set<() => void>();

function redirectUri(): string {
  return `${location.origin}/`;
}

function discover(): Promise<Metadata> {
  metadata ??= fetch("/.well-known/oauth-authorization-server", { cache: "no-store" }).then(
    async (r) => {
      if (!r.ok) throw new Error(`sso's metadata answered ${r.status}`);
      return (await r.json()) as Metadata;
    },
  );
  return metadata;
}

function base64url(bytes: Uint8Array): string {
  let text = "";
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function random(bytes: number): string {
  return base64url(crypto.getRandomValues(new Uint8Array(bytes)));
}

async function challenge(verifier: string): Promise<string> {
  if (!crypto.subtle) {
    throw new Error(
      "this page is not a secure context: serve the console over TLS (or open it on 127.0.0.1)",
    );
  }
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
  return base64url(new Uint8Array(digest));
}

/** Sends the browser to sso's login page; it comes back to `/` with a code. */
export async function signIn(returnTo = location.pathname + location.search): Promise<never> {
  const meta = await discover();
  const pending: Pending = { state: random(16), verifier: random(32), returnTo };
  sessionStorage.setItem(PENDING_KEY, JSON.stringify(pending));
  const url = new URL(meta.authorization_endpoint, location.origin);
  url.search = new URLSearchParams({
    response_type: "code",
    client_id: CLIENT_ID,
    redirect_uri: redirectUri(),
    code_challenge: await challenge(pending.verifier),
    code_challenge_method: "S256",
    state: pending.state,
  }).toString();
  location.assign(url.toString());
  return new Promise<never>(() => {});
}

async function tokenRequest(form: Record<string, string>): Promise<Tokens> {
  const meta = await discover();
  const response = await fetch(meta.token_endpoint, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams(form),
    cache: "no-store",
  });
  const body = (await response.json().catch(() => ({}))) as Record<string, unknown>;
  if (!response.ok) {
    const description = String(body.error_description ?? body.error ?? response.statusText);
    throw new Error(description);
  }
  const expiresIn = Number(body.expires_in ?? 0);
  return {
    access: String(body.access_token),
    refresh: typeof body.refresh_token === "string" ? body.refresh_token : undefined,
    expiresAt: Date.now() + expiresIn * 1000,
  };
}

function keep(next: Tokens) {
  tokens = next;
  window.clearTimeout(refreshTimer);
  if (next.refresh) {
    // Refresh when four fifths of the lifetime have passed (at least 5 s from now).
    const wait = Math.max(5_000, (next.expiresAt - Date.now()) * 0.8);
    refreshTimer = window.setTimeout(() => void refresh().catch(() => {}), wait);
  }
  listeners.forEach((l) => l());
}

function forget() {
  tokens = null;
  window.clearTimeout(refreshTimer);
  listeners.forEach((l) => l());
}

/**
 * Finishes a sign-in when the page is sso's redirect back (`?code=&state=`), or reports why there
 * is no session. Returns the path to show once signed in.
 */
export async function completeSignIn(): Promise<{ returnTo: string } | SignedOut> {
  const params = new URLSearchParams(location.search);
  const raw = sessionStorage.getItem(PENDING_KEY);
  const code = params.get("code");
  const error = params.get("error");
  if (!code && !error) {
    return params.has("signed-out") ? { reason: "signed-out" } : { reason: "new" };
  }
  sessionStorage.removeItem(PENDING_KEY);
  history.replaceState(null, "", "/");
  const pending = raw ? (JSON.parse(raw) as Pending) : null;
  if (!pending || params.get("state") !== pending.state) {
    return { reason: "refused", message: "The sign-in answer did not match this page: sign in again." };
  }
  if (error) {
    const description = params.get("error_description");
    const message =
      error === "access_denied"
        ? "sso refused the sign-in: this account (or one above it) is disabled."
        : `sso refused the sign-in (${error}${description ? `: ${description}` : ""}).`;
    return { reason: "refused", message };
  }
  try {
    keep(
      await tokenRequest({
        grant_type: "authorization_code",
        code: code!,
        redirect_uri: redirectUri(),
        client_id: CLIENT_ID,
        code_verifier: pending.verifier,
      }),
    );
  } catch (e) {
    return { reason: "refused", message: `The sign-in could not be completed: ${(e as Error).message}` };
  }
  return { returnTo: pending.returnTo.startsWith("/") ? pending.returnTo : "/" };
}

/** A new access token from the refresh token (rotated: the old one is spent). */
export function refresh(): Promise<void> {
  refreshing ??= (async () => {
    try {
      const current = tokens;
      if (!current?.refresh) throw new Error("no refresh token");
      keep(await tokenRequest({ grant_type: "refresh_token", refresh_token: current.refresh }));
    } catch (e) {
      forget();
      throw e;
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

/** The current access token, refreshed first when it has expired. */
export async function accessToken(): Promise<string | null> {
  if (refreshing) await refreshing.catch(() => {});
  if (tokens && tokens.expiresAt - Date.now() < 2_000 && tokens.refresh) {
    await refresh().catch(() => {});
  }
  return tokens?.access ?? null;
}

/** Revokes the login at sso (its refresh token and every access token issued from it) and forgets it. */
export async function signOut(): Promise<void> {
  const current = tokens;
  forget();
  if (current) {
    const meta = await discover().catch(() => null);
    if (meta) {
      await fetch(meta.revocation_endpoint, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams({
          token: current.refresh ?? current.access,
          token_type_hint: current.refresh ? "refresh_token" : "access_token",
          client_id: CLIENT_ID,
        }),
        cache: "no-store",
      }).catch(() => {});
    }
  }
  // Replace the page, so that Back does not bring a signed-in page back from the history.
  location.replace("/?signed-out");
}

export function identity(): Identity | null {
  if (!tokens) return null;
  try {
    const payload = tokens.access.split(".")[1]!.replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(payload)) as Record<string, unknown>;
    return {
      subject: String(claims.sub),
      kind: String(claims.kind ?? "user"),
      scopes: String(claims.scope ?? "").split(" ").filter(Boolean),
      expiresAt: Number(claims.exp) * 1000,
    };
  } catch {
    return null;
  }
}

export function signedIn(): boolean {
  return tokens !== null;
}

/** Calls `listener` whenever the session changes (signed in, refreshed, lost). */
export function onSessionChange(listener: () => void): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

/** The session was refused mid-way (revoked, the user disabled): forget it. */
export function sessionLost() {
  forget();
}
