// The operator's sections: tenants with their usage, and live rates from /metrics.
import { useRef, useState } from "preact/hooks";
import { call, seg } from "./api.js";
import { meanBetween, parse, rate, sumBy } from "./prom.js";
import { Chart, Notice, Table, clock, formatValue, usePoll } from "./ui.jsx";
import { LimitsView } from "./tenant.jsx";

// Usage is read for at most this many tenants (a few requests at a time).
const MAX_USAGE = 200;

async function inBatches(items, size, fn) {
  const out = [];
  for (let i = 0; i < items.length; i += size) {
    out.push(...(await Promise.all(items.slice(i, i + size).map(fn))));
  }
  return out;
}

export function Tenants({ session }) {
  const [rows, setRows] = useState(null);
  const [error, setError] = useState("");
  const [filter, setFilter] = useState("");
  const [open, setOpen] = useState(null);
  const [detail, setDetail] = useState(null);
  const load = async () => {
    try {
      const list = await call(session.token, "GET", "/admin/tenants");
      list.sort((a, b) => a.name.localeCompare(b.name));
      const usage = await inBatches(list.slice(0, MAX_USAGE), 4, (t) =>
        call(session.token, "GET", `/admin/tenants/${seg(t.name)}/usage`).catch(() => null),
      );
      setRows(list.map((t, i) => ({ ...t, key: t.name, usage: usage[i] || null })));
      setError("");
    } catch (e) {
      setError(e.message);
    }
  };
  usePoll(load, 5000, true, []);
  const show = async (name) => {
    if (open === name) {
      setOpen(null);
      return;
    }
    setOpen(name);
    setDetail(null);
    try {
      const [limits, usage] = await Promise.all([
        call(session.token, "GET", `/admin/tenants/${seg(name)}/limits`),
        call(session.token, "GET", `/admin/tenants/${seg(name)}/usage`),
      ]);
      setDetail({ name, limits, usage });
    } catch (e) {
      setError(e.message);
    }
  };
  const shown = (rows || []).filter((r) => r.name.includes(filter.trim()));
  const remaining = (u, c) => {
    const r = u?.rates?.[c];
    if (!r) return "—";
    return r.perSec ? `${r.remaining} of ${r.burst}` : "unlimited";
  };
  return (
    <>
      <div class="search">
        <label for="tenant-filter">Find a tenant</label>
        <input id="tenant-filter" value={filter} onInput={(e) => setFilter(e.currentTarget.value)} autocomplete="off" />
      </div>
      <Notice error>{error}</Notice>
      {rows && (
        <>
          <p class="muted">
            {rows.length} tenant{rows.length === 1 ? "" : "s"}; refreshed every 5 s{rows.length > MAX_USAGE ? `; usage of the first ${MAX_USAGE}` : ""}.
          </p>
          <Table
            caption="Tenants and their usage"
            empty="No tenants match."
            rows={shown}
            columns={[
              { label: "Tenant", cell: (t) => <strong>{t.name}</strong> },
              { label: "Created", cell: (t) => clock(t.createdAt * (t.createdAt < 1e12 ? 1000 : 1)) },
              {
                label: "Active waiters",
                cell: (t) => (t.usage ? `${t.usage.activeWaiters}${t.usage.maxActiveWaiters ? ` of ${t.usage.maxActiveWaiters}` : ""}` : "—"),
              },
              {
                label: "Stored bytes",
                cell: (t) => (t.usage ? `${t.usage.storedBytes}${t.usage.maxStoredBytes ? ` of ${t.usage.maxStoredBytes}` : ""}` : "—"),
              },
              { label: "Wait (at once now)", cell: (t) => remaining(t.usage, "wait") },
              { label: "Notify (at once now)", cell: (t) => remaining(t.usage, "notify") },
              { label: "Read (at once now)", cell: (t) => remaining(t.usage, "read") },
              {
                label: "Details",
                cell: (t) => (
                  <button type="button" class="secondary" aria-expanded={open === t.name} onClick={() => show(t.name)} aria-label={`Limits of ${t.name}`}>
                    {open === t.name ? "Hide limits" : "Limits"}
                  </button>
                ),
              },
            ]}
          />
        </>
      )}
      {open && detail && detail.name === open && (
        <section class="card" aria-labelledby="tenant-detail-h">
          <h3 id="tenant-detail-h">
            Tenant <code>{open}</code>
          </h3>
          <LimitsView limits={detail.limits.limits} overrides={detail.limits.overrides} usage={detail.usage} />
        </section>
      )}
    </>
  );
}

// Samples kept for the charts.
const KEEP = 90;

function point(prev, cur) {
  const dt = (cur.at - prev.at) / 1000;
  const counter = (name, by) => {
    const a = sumBy(prev.samples, name, by);
    const b = sumBy(cur.samples, name, by);
    const out = {};
    for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) out[k] = rate(a[k] ?? 0, b[k], dt);
    return out;
  };
  const gauge = (name) => sumBy(cur.samples, name).all ?? null;
  return {
    at: cur.at,
    notifies: counter("herald_notifies_total", "outcome"),
    attempts: counter("herald_delivery_attempts_total", "outcome"),
    deadLetters: counter("herald_dead_letters_total").all ?? 0,
    timeouts: counter("herald_timeouts_total").all ?? 0,
    lag: gauge("herald_stream_lag"),
    pending: gauge("herald_stream_pending"),
    retries: gauge("herald_delivery_retries_scheduled"),
    notifyToDelivery: meanBetween(prev.samples, cur.samples, "herald_notify_to_delivery_seconds"),
    lateness: meanBetween(prev.samples, cur.samples, "herald_timeout_lateness_seconds"),
  };
}

export function Rates({ session }) {
  const [every, setEvery] = useState(2);
  const last = useRef(null);
  const [points, setPoints] = useState([]);
  const [error, setError] = useState("");
  const scrape = async () => {
    try {
      const text = await call(session.token, "GET", "/metrics");
      const cur = { at: Date.now(), samples: parse(String(text)) };
      const prev = last.current;
      last.current = cur;
      if (prev) setPoints((ps) => [...ps, point(prev, cur)].slice(-KEEP));
      setError("");
    } catch (e) {
      setError(e.message);
    }
  };
  usePoll(scrape, every * 1000, true, [every]);
  const times = points.map((p) => p.at);
  const keysOf = (field) => [...new Set(points.flatMap((p) => Object.keys(p[field])))].sort();
  const byKey = (field, k) => points.map((p) => p[field][k] ?? 0);
  const notifyKeys = keysOf("notifies");
  const attemptKeys = keysOf("attempts");
  const series = (field, keys) => (keys.length ? keys.map((k) => ({ name: k, values: byKey(field, k) })) : [{ name: "none yet", values: points.map(() => 0) }]);
  return (
    <>
      <p class="muted">
        Rates between two scrapes of this process's <code>/metrics</code> (parsed here, in the browser). In a deployment
        with separate worker processes, deliveries are counted by the workers: use Prometheus for the whole fleet.
      </p>
      <div class="toolbar">
        <label for="every">Scrape every</label>
        <select id="every" value={every} onChange={(e) => setEvery(Number(e.currentTarget.value))}>
          <option value="1">1 s</option>
          <option value="2">2 s</option>
          <option value="5">5 s</option>
          <option value="10">10 s</option>
        </select>
        <span class="muted">{points.length
            ? `${points.length} interval${points.length === 1 ? "" : "s"} charted`
            : last.current
              ? "waiting for a second scrape…"
              : "scraping…"}</span>
      </div>
      <Notice error>{error}</Notice>
      <div class="charts">
        <Chart title="Notifies per second, by outcome" unit="/s" times={times} series={series("notifies", notifyKeys)} />
        <Chart title="Delivery attempts per second, by outcome" unit="/s" times={times} series={series("attempts", attemptKeys)} />
        <Chart
          title="Delivery lag"
          unit=""
          times={times}
          series={[
            { name: "not yet read (entries)", values: points.map((p) => p.lag) },
            { name: "in flight (entries)", values: points.map((p) => p.pending) },
            { name: "awaiting retry", values: points.map((p) => p.retries) },
          ]}
        />
        <Chart
          title="Notify to delivery, mean over the interval"
          unit="s"
          times={times}
          series={[{ name: "notify → 2xx", values: points.map((p) => p.notifyToDelivery) }]}
        />
        <Chart
          title="Timeouts: lateness and rate"
          unit=""
          times={times}
          series={[
            { name: "lateness, mean (s)", values: points.map((p) => p.lateness) },
            { name: "timeouts /s", values: points.map((p) => p.timeouts) },
            { name: "dead letters /s", values: points.map((p) => p.deadLetters) },
          ]}
        />
      </div>
      {points.length > 0 && (
        <p class="muted">Latest: {formatValue(Object.values(points[points.length - 1].notifies).reduce((a, b) => a + (b || 0), 0), "notifies/s")}.</p>
      )}
    </>
  );
}
