// Small shared pieces: time formatting, a ticking clock, polling, status messages, charts.
import { useEffect, useRef, useState } from "preact/hooks";

export function useNow(ms = 1000) {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const id = setInterval(() => setNow(Date.now()), ms);
    return () => clearInterval(id);
  }, [ms]);
  return now;
}

// Calls `fn` now and every `ms` while `on`; the latest call's result wins.
export function usePoll(fn, ms, on, deps) {
  const saved = useRef(fn);
  saved.current = fn;
  useEffect(() => {
    if (!on) return undefined;
    let stop = false;
    let timer;
    const tick = async () => {
      await saved.current();
      if (!stop) timer = setTimeout(tick, ms);
    };
    tick();
    return () => {
      stop = true;
      clearTimeout(timer);
    };
  }, [ms, on, ...deps]);
}

export function pad(n, w = 2) {
  return String(n).padStart(w, "0");
}

export function clock(ms) {
  if (ms === null || ms === undefined) return "—";
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function clockMs(ms) {
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export function span(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  if (d) return `${d}d ${h}h ${m}m`;
  if (h) return `${h}h ${m}m ${sec}s`;
  if (m) return `${m}m ${sec}s`;
  return `${sec}s`;
}

// "in 4m 12s" / "2m ago".
export function relative(ms, now) {
  const d = ms - now;
  if (Math.abs(d) < 1000) return "now";
  return d > 0 ? `in ${span(d)}` : `${span(-d)} ago`;
}

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

// A body given as base64: its text when it is UTF-8, else a note.
export function bodyText(b64, max = 2000) {
  if (b64 === null || b64 === undefined) return null;
  try {
    const raw = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const text = new TextDecoder("utf-8", { fatal: true }).decode(raw);
    return text.length > max ? `${text.slice(0, max)}…` : text;
  } catch {
    return `(binary, ${bytes(atob(b64).length)})`;
  }
}

// A message for screen readers and eyes: `role=status` (polite) or `alert` for errors.
export function Notice({ error, children }) {
  if (!children) return null;
  return (
    <p class={error ? "notice error" : "notice"} role={error ? "alert" : "status"}>
      {children}
    </p>
  );
}

// A table that scrolls sideways on a narrow screen and becomes cards on a very narrow one
// (each cell shows its column's name: data-label).
export function Table({ caption, columns, rows, empty }) {
  if (!rows.length) return <p class="muted">{empty}</p>;
  return (
    <div class="table-wrap">
      <table class="stack">
        <caption class="sr-only">{caption}</caption>
        <thead>
          <tr>
            {columns.map((c) => (
              <th scope="col" key={c.label}>
                {c.label}
              </th>
            ))}
          </tr>
        </thead>
        <tbody>
          {rows.map((row, i) => (
            <tr key={row.key ?? i}>
              {columns.map((c) => (
                <td data-label={c.label} key={c.label} class={c.class}>
                  {c.cell(row)}
                </td>
              ))}
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

const COLORS = ["#1f6fb2", "#c2410c", "#15803d", "#7c3aed", "#b91c1c", "#0f766e"];

function fmt(v, unit) {
  if (v === null || v === undefined || Number.isNaN(v)) return "—";
  const n = Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2);
  return unit ? `${n} ${unit}` : n;
}

export { fmt as formatValue };

// A line chart of a few series over the same sample times (SVG, no library). The latest
// values are also written out as text next to it, which is what a screen reader reads.
export function Chart({ title, unit, times, series }) {
  const w = 600;
  const h = 160;
  const padL = 44;
  const padB = 18;
  const values = series.flatMap((s) => s.values).filter((v) => v !== null && Number.isFinite(v));
  const max = Math.max(1e-9, ...values) * 1.1;
  const t0 = times[0] ?? 0;
  const t1 = times[times.length - 1] ?? 1;
  const x = (t) => padL + ((t - t0) / Math.max(1, t1 - t0)) * (w - padL - 4);
  const y = (v) => 4 + (1 - v / max) * (h - padB - 4);
  const latest = series.map((s) => ({ name: s.name, value: s.values[s.values.length - 1] }));
  const summary = `${title}: ${latest.map((l) => `${l.name} ${fmt(l.value, unit)}`).join(", ")}`;
  return (
    <figure class="chart">
      <figcaption>
        <strong>{title}</strong>
        <ul class="legend">
          {latest.map((l, i) => (
            <li key={l.name}>
              <span class="swatch" data-color={i} aria-hidden="true" />
              {l.name}: <strong>{fmt(l.value, unit)}</strong>
            </li>
          ))}
        </ul>
      </figcaption>
      <svg viewBox={`0 0 ${w} ${h}`} role="img" aria-label={summary}>
        <line x1={padL} y1={h - padB} x2={w} y2={h - padB} class="axis" />
        <line x1={padL} y1={4} x2={padL} y2={h - padB} class="axis" />
        <text x={padL - 4} y={12} class="tick" text-anchor="end">
          {fmt(max / 1.1)}
        </text>
        <text x={padL - 4} y={h - padB} class="tick" text-anchor="end">
          0
        </text>
        <text x={w - 4} y={h - 4} class="tick" text-anchor="end">
          {times.length > 1 ? `last ${Math.round((t1 - t0) / 1000)} s` : "collecting…"}
        </text>
        {series.map((s, i) => {
          const color = COLORS[i % COLORS.length];
          const points = s.values
            .map((v, j) => (v === null || !Number.isFinite(v) ? null : [x(times[j]), y(v)]))
            .filter(Boolean);
          if (points.length === 1) {
            return <circle key={s.name} cx={points[0][0]} cy={points[0][1]} r="3" fill={color} />;
          }
          return (
            <polyline
              key={s.name}
              points={points.map(([px, py]) => `${px.toFixed(1)},${py.toFixed(1)}`).join(" ")}
              fill="none"
              stroke={color}
              stroke-width="2"
            />
          );
        })}
      </svg>
    </figure>
  );
}
