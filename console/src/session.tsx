// Who is signed in, for every page: the token's claims and the user's own record.

import { createContext, useContext, useEffect, useState, type ReactNode } from "react";
import { identity, onSessionChange, type Identity } from "./auth";
import { users } from "./api";
import type { User } from "./gen/sipmba/v1/objects_pb";

export interface Session {
  identity: Identity;
  user: User | null;
}

const SessionContext = createContext<Session | null>(null);

export function useSession(): Session {
  const session = useContext(SessionContext);
  if (!session) throw new Error("useSession outside a signed-in page");
  return session;
}

/** Renders `children` while signed in, `signedOut` otherwise (the session may end at any call). */
export function SessionProvider(props: { children: ReactNode; signedOut: ReactNode }) {
  const [me, setMe] = useState<Identity | null>(identity());
  const [user, setUser] = useState<User | null>(null);
  useEffect(() => onSessionChange(() => setMe(identity())), []);
  const subject = me?.subject;
  useEffect(() => {
    if (!subject) return;
    users
      .getUser({ id: { value: subject } })
      .then(setUser)
      .catch(() => setUser(null));
  }, [subject]);
  if (!me) return <>{props.signedOut}</>;
  return <SessionContext.Provider value={{ identity: me, user }}>{props.children}</SessionContext.Provider>;
}
