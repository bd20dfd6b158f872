import { useCallback, useMemo, useState } from "react";
import { create } from "@bufbuild/protobuf";
import { DurationSchema, timestampDate, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Link } from "wouter";
import { control, presence, telemetry, things } from "../api";
import { CommandTable, SendCommand, Watched } from "../components/Commands";
import { Plot, formatValue, type Series } from "../components/Plot";
import { Online, Page, Problem, StateBadge } from "../components/ui";
import { Aggregation, type TelemetryEvent } from "../gen/sipmba/v1/processing_pb";
import type { Metric } from "../gen/sipmba/v1/collect_pb";
import type { Command } from "../gen/sipmba/v1/control_pb";
import { ago, date, labelText, stateName } from "../format";
import { useNow, usePoll, useStream } from "../hooks";

const RANGES = [
  { label: "15 minutes", ms: 15 * 60_000, bucketS: 10 },
  { label: "1 hour", ms: 3_600_000, bucketS: 30 },
  { label: "6 hours", ms: 6 * 3_600_000, bucketS: 180 },
  { label: "24 hours", ms: 24 * 3_600_000, bucketS: 720 },
];

interface Latest {
  value: string;
  number?: number;
  unit: string;
  at: Date | null;
}

function latestOf(metric: Metric, at: Date | null): Latest {
  const v = metric.value;
  const value = v.case === "number" ? formatValue(v.value) : v.case === "flag" ? String(v.value) : (v.value ?? "");
  return { value, number: v.case === "number" ? v.value : undefined, unit: metric.unit, at };
}

export function ThingPage({ id }: { id: string }) {
  const now = useNow();
  const [range, setRange] = useState(RANGES[0]!);
  const [latest, setLatest] = useState<Map<string, Latest>>(new Map());
  const [live, setLive] = useState<Map<string, Series>>(new Map());
  const [sent, setSent] = useState<Command | null>(null);
  const thing = usePoll((signal) => things.getThing({ id: { value: id } }, { signal }), [id], 10_000);
  const seen = usePoll(
    async (signal) => (await presence.getPresence({ things: [{ value: id }] }, { signal })).presences[0],
    [id],
    2_000,
  );
  const first = usePoll(
    async (signal) => {
      const answer = await telemetry.getLatest({ things: [{ value: id }] }, { signal });
      const map = new Map<string, Latest>();
      for (const v of answer.values) map.set(v.metric!.name, latestOf(v.metric!, date(v.deviceTime)));
      setLatest(map);
      return map;
    },
    [id],
  );
  // The numeric metrics get a plot each; the plots depend on their names and units only.
  const metricKey = JSON.stringify(
    [...latest.entries()].filter(([, l]) => l.number !== undefined).map(([name, l]) => ({ name, unit: l.unit })),
  );
  const metrics = useMemo(() => JSON.parse(metricKey) as Array<{ name: string; unit: string }>, [metricKey]);
  const names = metrics.map((m) => m.name).join(",");
  const to = now;
  const from = to - range.ms;
  const history = usePoll(
    async (signal) => {
      const end = Date.now();
      const series = new Map<string, Series>();
      for (const { name } of metrics) {
        const answer = await telemetry.queryHistory(
          {
            thing: { value: id },
            metric: name,
            start: timestampFromMs(end - range.ms),
            end: timestampFromMs(end),
            bucket: create(DurationSchema, { seconds: BigInt(range.bucketS) }),
            aggregations: [Aggregation.AVG],
            page: { pageSize: 1000 },
          },
          { signal },
        );
        const xs: number[] = [];
        const ys: number[] = [];
        for (const b of answer.buckets) {
          if (b.avg === undefined || !b.start) continue;
          // A bucket is drawn at its middle, never past the end of the query.
          xs.push(Math.min(timestampDate(b.start).getTime() / 1000 + range.bucketS / 2, end / 1000));
          ys.push(b.avg);
        }
        series.set(name, { xs, ys });
      }
      return { series, end: end / 1000 };
    },
    [id, names, range.label],
  );

  const onReading = useCallback((event: TelemetryEvent) => {
    const reading = event.reading;
    if (!reading) return;
    const at = date(reading.deviceTime) ?? new Date();
    setLatest((old) => {
      const next = new Map(old);
      for (const m of reading.metrics) next.set(m.name, latestOf(m, at));
      return next;
    });
    setLive((old) => {
      const next = new Map(old);
      for (const m of reading.metrics) {
        if (m.value.case !== "number") continue;
        const s = next.get(m.name) ?? { xs: [], ys: [] };
        const dayAgo = Date.now() / 1000 - 86_400;
        const keep = s.xs.findIndex((x) => x >= dayAgo);
        const from = keep < 0 ? s.xs.length : keep;
        next.set(m.name, { xs: [...s.xs.slice(from), at.getTime() / 1000], ys: [...s.ys.slice(from), m.value.value] });
      }
      return next;
    });
  }, []);
  const streamError = useStream((signal) => telemetry.subscribe({ things: [{ value: id }] }, { signal }), onReading, [id]);

  const commands = usePoll(
    async (signal) => (await control.listCommands({ thing: { value: id }, page: { pageSize: 20 } }, { signal })).commands,
    [id, sent?.id?.value],
    3_000,
  );

  const t = thing.data;
  const title = t?.name ?? "Thing";
  const thingNames = new Map(t ? [[id, t.name]] : []);
  return (
    <Page title={title}>
      <p>
        <Link href="/">← Things</Link>
      </p>
      <Problem error={thing.error ?? first.error ?? history.error ?? streamError} />
      {t && (
        <dl className="fields summary">
          <dt>Presence</dt>
          <dd data-testid="presence">
            <Online online={seen.data?.online} /> last seen {ago(date(seen.data?.lastSeen), now)}
          </dd>
          <dt>State</dt>
          <dd>
            <StateBadge state={stateName(t.effectiveState)} />
          </dd>
          <dt>Labels</dt>
          <dd>{labelText(t.labels).join(", ") || "none"}</dd>
          <dt>Id</dt>
          <dd>
            <code>{id}</code>
          </dd>
        </dl>
      )}
      <section aria-labelledby="latest-title">
        <h2 id="latest-title">Latest values</h2>
        {latest.size === 0 && first.data && <p>No reading yet.</p>}
        <ul className="cards">
          {[...latest.entries()].map(([name, l]) => (
            <li key={name} className="card" data-metric={name}>
              <span className="muted">{name}</span>
              <strong>
                {l.value} {l.unit}
              </strong>
              <span className="muted">{ago(l.at, now)}</span>
            </li>
          ))}
        </ul>
      </section>
      <section aria-labelledby="plots-title">
        <div className="heading">
          <h2 id="plots-title">Over time</h2>
          <div>
            <label htmlFor="range">Range</label>{" "}
            <select id="range" value={range.label} onChange={(e) => setRange(RANGES.find((r) => r.label === e.target.value)!)}>
              {RANGES.map((r) => (
                <option key={r.label}>{r.label}</option>
              ))}
            </select>
          </div>
        </div>
        <div className="plots">
          {metrics.map(({ name, unit }) => {
            // The history up to its query, then the readings that arrived after it, in time order.
            const past = history.data?.series.get(name) ?? { xs: [], ys: [] };
            const after = history.data?.end ?? 0;
            const recent = live.get(name) ?? { xs: [], ys: [] };
            const points = past.xs.map((x, i) => [x, past.ys[i]!] as const);
            recent.xs.forEach((x, i) => x > after && points.push([x, recent.ys[i]!]));
            points.sort((a, b) => a[0] - b[0]);
            const cut = from / 1000;
            const shown = points.filter(([x]) => x >= cut);
            const series = { xs: shown.map(([x]) => x), ys: shown.map(([, y]) => y) };
            return <Plot key={name} metric={name} unit={unit} series={series} from={from / 1000} to={to / 1000} />;
          })}
        </div>
      </section>
      <section aria-labelledby="commands-title">
        <h2 id="commands-title">Commands</h2>
        <SendCommand things={[]} thing={id} onSent={setSent} />
        {sent && <Watched key={sent.id!.value} command={sent} onChange={commands.reload} />}
        <Problem error={commands.error} />
        <CommandTable commands={commands.data ?? []} names={thingNames} />
      </section>
    </Page>
  );
}
