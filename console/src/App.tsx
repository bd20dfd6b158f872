import { useEffect, useState, type ReactNode } from "react";
import { Problem } from "./components/ui";
import { Link, Route, Switch, useLocation } from "wouter";
import { signIn, signOut, type SignedOut } from "./auth";
import { SessionProvider, useSession } from "./session";
import { ThingsPage } from "./pages/Things";
import { ThingPage } from "./pages/Thing";
import { CommandsPage } from "./pages/Commands";
import { RulesPage } from "./pages/Rules";
import { UsersPage } from "./pages/Users";
import { ChannelsPage } from "./pages/Channels";
import { SessionPage } from "./pages/Session";

const NAV: Array<[string, string]> = [
  ["/", "Things"],
  ["/commands", "Commands"],
  ["/rules", "Rules"],
  ["/users", "Users"],
  ["/channels", "Channels"],
  ["/session", "Session"],
];

export function App({ signedOut }: { signedOut: SignedOut | null }) {
  return (
    <SessionProvider signedOut={<SignInPage why={signedOut ?? { reason: "expired" }} />}>
      <Shell>
        <Switch>
          <Route path="/" component={ThingsPage} />
          <Route path="/things/:id">{(params) => <ThingPage id={params.id} />}</Route>
          <Route path="/commands" component={CommandsPage} />
          <Route path="/rules" component={RulesPage} />
          <Route path="/users" component={UsersPage} />
          <Route path="/channels" component={ChannelsPage} />
          <Route path="/session" component={SessionPage} />
          <Route>
            <main id="main">
              <h1>Not found</h1>
              <p>
                Nothing is here. <Link href="/">See your things.</Link>
              </p>
            </main>
          </Route>
        </Switch>
      </Shell>
    </SessionProvider>
  );
}

function Shell({ children }: { children: ReactNode }) {
  const { user } = useSession();
  const [location] = useLocation();
  return (
    <>
      <a className="skip" href="#main">
        Skip to content
      </a>
      <header className="top">
        <span className="brand">SIP-MBA</span>
        <nav aria-label="Console">
          <ul>
            {NAV.map(([href, label]) => {
              const current = href === "/" ? location === "/" || location.startsWith("/things") : location.startsWith(href);
              return (
                <li key={href}>
                  <Link href={href} aria-current={current ? "page" : undefined}>
                    {label}
                  </Link>
                </li>
              );
            })}
          </ul>
        </nav>
        <span className="who">
          {user?.username ?? ""}
          <button type="button" className="link" onClick={() => void signOut()}>
            Sign out
          </button>
        </span>
      </header>
      {children}
    </>
  );
}

function SignInPage({ why }: { why: SignedOut }) {
  const [problem, setProblem] = useState<string | null>(null);
  const go = (returnTo?: string) =>
    signIn(returnTo).catch((e: Error) => setProblem(`The sign-in page cannot be reached: ${e.message}`));
  useEffect(() => {
    if (why.reason === "new") void go();
  }, [why.reason]);
  const text = {
    new: "Taking you to the sign-in page…",
    "signed-out": "You signed out. Your session was revoked.",
    expired: "Your session ended (it was revoked, or your account was disabled).",
    refused: why.reason === "refused" ? why.message : "",
  }[why.reason];
  return (
    <main id="main" className="signin">
      <h1>SIP-MBA console</h1>
      <p role={why.reason === "refused" ? "alert" : "status"}>{text}</p>
      <Problem error={problem} />
      {(why.reason !== "new" || problem) && (
        <button type="button" onClick={() => void go("/")}>
          Sign in
        </button>
      )}
    </main>
  );
}
