// Prometheus text exposition format → samples, and rates from two scrapes.

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"/g;

function number(raw) {
  if (raw === "+Inf" || raw === "Inf") return Infinity;
  if (raw === "-Inf") return -Infinity;
  return Number(raw);
}

export function parse(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = LINE.exec(line);
    if (!m) continue;
    const labels = {};
    if (m[2]) {
      LABEL.lastIndex = 0;
      let l;
      while ((l = LABEL.exec(m[2]))) {
        labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
      }
    }
    samples.push({ name: m[1], labels, value: number(m[3]) });
  }
  return samples;
}

// Sum of a metric's samples, grouped by one label (or all together when `by` is empty).
export function sumBy(samples, name, by) {
  const out = {};
  for (const s of samples) {
    if (s.name !== name || !Number.isFinite(s.value)) continue;
    const key = by ? s.labels[by] ?? "" : "all";
    out[key] = (out[key] || 0) + s.value;
  }
  return out;
}

// Per-second rate of a counter between two scrapes (null when it went down: a restart).
export function rate(before, after, seconds) {
  if (before === undefined || after === undefined || seconds <= 0) return null;
  const d = after - before;
  return d < 0 ? null : d / seconds;
}

// Mean of a histogram's observations made between two scrapes: Δsum / Δcount.
export function meanBetween(prev, cur, name) {
  const s0 = sumBy(prev, `${name}_sum`).all;
  const s1 = sumBy(cur, `${name}_sum`).all;
  const c0 = sumBy(prev, `${name}_count`).all;
  const c1 = sumBy(cur, `${name}_count`).all;
  if ([s0, s1, c0, c1].some((v) => v === undefined)) return null;
  const dc = c1 - c0;
  return dc > 0 ? (s1 - s0) / dc : null;
}
