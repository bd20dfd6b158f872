// Small pieces every page uses.

import { useEffect, useRef, type ReactNode } from "react";

export function Page(props: { title: string; actions?: ReactNode; children: ReactNode }) {
  useEffect(() => {
    document.title = `${props.title} · SIP-MBA`;
  }, [props.title]);
  return (
    <main id="main">
      <div className="heading">
        <h1>{props.title}</h1>
        {props.actions}
      </div>
      {props.children}
    </main>
  );
}

/** An error a call returned, said where it happened. */
export function Problem({ error }: { error: string | null | undefined }) {
  if (!error) return null;
  return (
    <p className="problem" role="alert">
      {error}
    </p>
  );
}

export function Online({ online }: { online: boolean | undefined }) {
  if (online === undefined) return <span className="badge">unknown</span>;
  return <span className={online ? "badge ok" : "badge off"}>{online ? "online" : "offline"}</span>;
}

export function StateBadge({ state }: { state: string }) {
  const kind =
    state === "ACKED" || state === "active" || state === "enabled"
      ? "ok"
      : state === "FAILED" || state === "EXPIRED" || state === "disabled"
        ? "bad"
        : "wait";
  return <span className={`badge ${kind}`}>{state}</span>;
}

/** A secret shown this once, in a modal dialog. */
export function SecretDialog(props: {
  title: string;
  clientId: string;
  secret: string;
  onClose: () => void;
}) {
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    ref.current?.showModal();
  }, []);
  return (
    <dialog ref={ref} aria-labelledby="secret-title" onClose={props.onClose}>
      <h2 id="secret-title">{props.title}</h2>
      <p>
        This secret is shown this once: keep it now (the agent's <code>sipmba-edge provision</code> takes it).
      </p>
      <dl className="fields">
        <dt>Client id</dt>
        <dd>
          <code data-testid="client-id">{props.clientId}</code>
        </dd>
        <dt>Secret</dt>
        <dd>
          <code data-testid="client-secret">{props.secret}</code>
        </dd>
      </dl>
      <div className="row">
        <button type="button" onClick={() => void navigator.clipboard?.writeText(props.secret)}>
          Copy the secret
        </button>
        <button type="button" onClick={() => ref.current?.close()}>
          I have kept it
        </button>
      </div>
    </dialog>
  );
}

/** A question before something that cannot be undone. */
export function Confirm(props: {
  title: string;
  children: ReactNode;
  confirm: string;
  onConfirm: () => void;
  onClose: () => void;
}) {
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    ref.current?.showModal();
  }, []);
  return (
    <dialog ref={ref} aria-labelledby="confirm-title" onClose={props.onClose}>
      <h2 id="confirm-title">{props.title}</h2>
      {props.children}
      <div className="row">
        <button
          type="button"
          className="danger"
          onClick={() => {
            props.onConfirm();
            ref.current?.close();
          }}
        >
          {props.confirm}
        </button>
        <button type="button" onClick={() => ref.current?.close()}>
          Cancel
        </button>
      </div>
    </dialog>
  );
}
