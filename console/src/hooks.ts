// Data that stays current: a poll that repeats while the page shows it, and a server stream
// that is reopened when it ends.

import { useEffect, useRef, useState } from "react";
import { aborted, describe } from "./api";

export interface Loaded<T> {
  data: T | undefined;
  error: string | null;
  reload: () => void;
}

/** Calls `load` now, whenever `deps` change, on `reload()`, and every `everyMs` when given. */
export function usePoll<T>(
  load: (signal: AbortSignal) => Promise<T>,
  deps: unknown[],
  everyMs?: number,
): Loaded<T> {
  const [data, setData] = useState<T>();
  const [error, setError] = useState<string | null>(null);
  const [tick, setTick] = useState(0);
  const latest = useRef(load);
  latest.current = load;
  useEffect(() => {
    const controller = new AbortController();
    let timer: number | undefined;
    const run = async () => {
      try {
        const value = await latest.current(controller.signal);
        if (!controller.signal.aborted) {
          setData(value);
          setError(null);
        }
      } catch (e) {
        if (!controller.signal.aborted && !aborted(e)) setError(describe(e));
      }
      if (everyMs && !controller.signal.aborted) timer = window.setTimeout(run, everyMs);
    };
    void run();
    return () => {
      controller.abort();
      window.clearTimeout(timer);
    };
  }, [...deps, tick, everyMs]);
  return { data, error, reload: () => setTick((t) => t + 1) };
}

/** Runs `open` (a server stream) while mounted, handing each message to `each`; reopens it a
 *  second after it ends or fails. */
export function useStream<T>(
  open: (signal: AbortSignal) => AsyncIterable<T>,
  each: (message: T) => void,
  deps: unknown[],
): string | null {
  const [error, setError] = useState<string | null>(null);
  const handler = useRef(each);
  handler.current = each;
  const opener = useRef(open);
  opener.current = open;
  useEffect(() => {
    const controller = new AbortController();
    let timer: number | undefined;
    const run = async () => {
      try {
        for await (const message of opener.current(controller.signal)) {
          setError(null);
          handler.current(message);
        }
      } catch (e) {
        if (controller.signal.aborted || aborted(e)) return;
        setError(describe(e));
      }
      if (!controller.signal.aborted) timer = window.setTimeout(run, 1000);
    };
    void run();
    return () => {
      controller.abort();
      window.clearTimeout(timer);
    };
  }, deps);
  return error;
}

/** Re-renders every `ms` (for "seconds ago"). */
export function useNow(ms = 1000): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const timer = window.setInterval(() => setNow(Date.now()), ms);
    return () => window.clearInterval(timer);
  }, [ms]);
  return now;
}

/** Runs an action a person asked for: `busy` while it runs, its failure kept as `problem`
 *  (cleared at the next action); after a success, `after` runs (a list read again). */
export function useAction(after?: () => void) {
  const [problem, setProblem] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const act = async (what: () => Promise<unknown>): Promise<boolean> => {
    setProblem(null);
    setBusy(true);
    try {
      await what();
      after?.();
      return true;
    } catch (e) {
      setProblem(describe(e));
      return false;
    } finally {
      setBusy(false);
    }
  };
  return { act, busy, problem, setProblem };
}
