"""Plots of load-generator runs (JSON lines, one object per scenario) as PNG files, and a
Markdown table of the figures (summary.md).

Usage: bench_plots.py OUT_DIR RUN.jsonl [RUN.jsonl ...]
Each run is labelled by the "label" of its "machine" line (or its file name). Runs with
the same label (rounds appended to one file, or in several files) are summarised by the
median of each figure over the runs that include its scenario ("runs" column); with two
or more labels, the table gives the ratio last / first.
"""

import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def runs_of(path):
    """The runs of one file: (label, {scenario: report})."""
    runs, current = [], None
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        obj = json.loads(line)
        if obj.get("scenario") == "machine":
            current = (obj.get("label") or Path(path).stem, {"machine": obj})
            runs.append(current)
        elif current is not None:
            current[1][obj["scenario"]] = obj
    return runs


def median_runs(runs):
    """One run per label: each figure of a scenario is the median over the runs of that
    label that include the scenario. Returns (label, run, rounds per scenario)."""
    labels = []
    by_label = {}
    for label, run in runs:
        if label not in by_label:
            labels.append(label)
            by_label[label] = {}
        for scenario, report in run.items():
            by_label[label].setdefault(scenario, []).append(report)

    def merge(values):
        first = values[0]
        if isinstance(first, dict):
            keys = [k for k in first if all(isinstance(v, dict) and k in v for v in values)]
            return {k: merge([v[k] for v in values]) for k in keys}
        if isinstance(first, (int, float)) and not isinstance(first, bool) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
        ):
            return statistics.median(values)
        return first

    return [
        (label,
         {scenario: merge(reports) for scenario, reports in by_label[label].items()},
         {scenario: len(reports) for scenario, reports in by_label[label].items()})
        for label in labels
    ]


TABLE = [
    # The same script and client in both runs: its spread is the machine's noise.
    ("EVALSHA notify, no HTTP (ops/s)", ("baseline", "evalsha_notify_per_s"), None),
    ("HTTP notify, API-only Herald (req/s), C=64", ("notify_api_only", "notify_per_s"), "up"),
    ("… / EVALSHA notify", ("notify_api_only", "ratio_to_baseline"), "up"),
    ("HTTP notify while delivering (req/s), C=64", ("notify", "notify_per_s"), "up"),
    ("… / EVALSHA notify", ("notify", "ratio_to_baseline"), "up"),
    ("notify end to end, first notify → last delivery (/s)", ("notify", "end_to_end_per_s"), "up"),
    ("HTTP wait (req/s)", ("notify", "wait_per_s"), "up"),
    ("CPU µs per EVALSHA notify: Redis", ("baseline", "cpu_us_per_notify", "redis"), None),
    ("CPU µs per EVALSHA notify: load generator", ("baseline", "cpu_us_per_notify", "load_generator"), None),
    ("CPU µs per HTTP notify (API only): Herald", ("notify_api_only", "cpu_us_per_notify", "herald"), "down"),
    ("CPU µs per HTTP notify (API only): Redis", ("notify_api_only", "cpu_us_per_notify", "redis"), "down"),
    ("CPU µs per HTTP notify (API only): load generator", ("notify_api_only", "cpu_us_per_notify", "load_generator"), None),
    ("CPU µs per notify + delivery: Herald", ("notify", "cpu_us_per_notify_and_delivery", "herald"), "down"),
    ("CPU µs per notify + delivery: Redis", ("notify", "cpu_us_per_notify_and_delivery", "redis"), "down"),
    ("CPU µs per notify + delivery: load generator + receiver", ("notify", "cpu_us_per_notify_and_delivery", "load_generator"), None),
    ("notify→delivery p50 at saturation (ms)", ("notify", "latency_ms", "p50"), "down"),
    ("notify→delivery p99 at saturation (ms)", ("notify", "latency_ms", "p99"), "down"),
    ("notify→delivery p50 at 1,000/s (ms)", ("notify_at_rate", "latency_ms", "p50"), "down"),
    ("notify→delivery p90 at 1,000/s (ms)", ("notify_at_rate", "latency_ms", "p90"), "down"),
    ("notify→delivery p99 at 1,000/s (ms)", ("notify_at_rate", "latency_ms", "p99"), "down"),
    ("notify→delivery max at 1,000/s (ms)", ("notify_at_rate", "latency_ms", "max"), "down"),
    ("lookback save (req/s)", ("lookback", "save_per_s"), "up"),
    ("lookback consuming wait (req/s)", ("lookback", "consume_per_s"), "up"),
    ("lookback wait→delivery p99 (ms)", ("lookback", "latency_ms", "p99"), "down"),
    ("fan-out 10k: notify response (ms)", ("fanout", "notify_response_ms"), "down"),
    ("fan-out 10k: last delivery (ms)", ("fanout", "last_delivery_ms"), "down"),
    ("fan-out deliveries/s", ("fanout", "deliveries_per_s"), "up"),
    ("timeout lateness p50 (ms)", ("timeouts", "lateness_ms", "p50"), "down"),
    ("timeout lateness p99 (ms)", ("timeouts", "lateness_ms", "p99"), "down"),
    ("timeout lateness max (ms)", ("timeouts", "lateness_ms", "max"), "down"),
    ("Redis bytes per idle waiter", ("memory", "waiter", "redis_bytes"), "down"),
    ("… raw bytes (event id + wait JSON)", ("memory", "waiter", "raw_bytes"), None),
    ("Redis bytes per saved notification", ("memory", "saved_notification", "redis_bytes"), "down"),
    ("… raw bytes (run + event id + body)", ("memory", "saved_notification", "raw_bytes"), None),
    ("lost (all scenarios)", ("lost",), None),
    ("load average (1 min) during the runs", ("loadavg",), None),
]


SCENARIOS = {"baseline", "notify_api_only", "notify", "notify_at_rate", "lookback", "fanout",
             "timeouts", "memory"}


def fmt(v):
    if v is None:
        return "–"
    if isinstance(v, float) and abs(v) < 10:
        return f"{v:.2f}"
    return f"{v:,.0f}"


def summary_table(merged, raw_runs):
    labels = [label for label, _, _ in merged]
    lines = ["| figure | runs | " + " | ".join(labels) + (" | ratio |" if len(merged) > 1 else " |"),
             "|---|---|" + "---|" * len(merged) + ("---|" if len(merged) > 1 else "")]
    for name, path, better in TABLE:
        rounds = sorted({n.get(path[0], 0) for _, _, n in merged}) if path[0] in SCENARIOS else []
        values = []
        for label, run, _ in merged:
            if path == ("lost",):
                runs = [r for l, r in raw_runs if l == label]
                values.append(sum(rep.get("lost", 0) for r in runs for rep in r.values()))
            elif path == ("loadavg",):
                runs = [r for l, r in raw_runs if l == label]
                loads = [rep["loadavg_1m"] for r in runs for rep in r.values() if rep.get("loadavg_1m") is not None]
                values.append(statistics.median(loads) if loads else None)
            else:
                values.append(get(run, *path))
        runs_text = "/".join(str(n) for n in rounds) if rounds else ""
        row = f"| {name} | {runs_text} | " + " | ".join(fmt(v) for v in values) + " |"
        if len(merged) > 1:
            first, last = values[0], values[-1]
            if better and first and last:
                row += f" {last / first:.2f}× |"
            else:
                row += " |"
        lines.append(row)
    return "\n".join(lines) + "\n"


def grouped_bars(ax, groups, series, ylabel, log=False):
    """groups: names on the x axis; series: [(label, [value per group])]."""
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series):
        xs = [g + i * width - 0.4 + width / 2 for g in range(len(groups))]
        bars = ax.bar(xs, [v or 0 for v in values], width, label=label)
        for bar, v in zip(bars, values):
            if v:
                ax.annotate(f"{v:,.0f}" if v >= 10 else f"{v:.1f}",
                            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, fontsize=8)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def get(report, *path):
    for key in path:
        if not isinstance(report, dict) or key not in report:
            return None
        report = report[key]
    return report


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    raw_runs = [run for path in sys.argv[2:] for run in runs_of(path)]
    if not raw_runs:
        sys.exit("no runs found")
    merged = median_runs(raw_runs)
    (out / "summary.md").write_text(summary_table(merged, raw_runs))
    runs = [(label, run) for label, run, _ in merged]

    throughput = [
        ("EVALSHA notify\n(no HTTP)", ("baseline", "evalsha_notify_per_s")),
        ("HTTP notify\n(API only)", ("notify_api_only", "notify_per_s")),
        ("HTTP notify\n(delivering)", ("notify", "notify_per_s")),
        ("notify end to end", ("notify", "end_to_end_per_s")),
        ("HTTP wait", ("notify", "wait_per_s")),
        ("lookback save", ("lookback", "save_per_s")),
        ("lookback consume", ("lookback", "consume_per_s")),
        ("fan-out\ndeliveries", ("fanout", "deliveries_per_s")),
    ]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    grouped_bars(ax, [name for name, _ in throughput],
                 [(label, [get(r, *path) for _, path in throughput]) for label, r in runs],
                 "operations per second")
    ax.set_title("Throughput (2 cores shared by load generator, receiver, Herald, Redis)")
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)

    latency = [
        ("notify→delivery\nat 1,000/s", ("notify_at_rate", "latency_ms")),
        ("notify→delivery\nsaturated", ("notify", "latency_ms")),
        ("wait→delivery\nlookback", ("lookback", "latency_ms")),
        ("timeout lateness\n10k in 1 s", ("timeouts", "lateness_ms")),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, quantile in zip(axes, ["p50", "p99"]):
        grouped_bars(ax, [name for name, _ in latency],
                     [(label, [get(r, *path, quantile) for _, path in latency]) for label, r in runs],
                     f"{quantile} (ms, log scale)", log=True)
        ax.set_title(f"Latency {quantile}")
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)

    memory = [
        ("idle waiter", "waiter"),
        ("saved notification", "saved_notification"),
    ]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = []
    raw = [get(runs[-1][1], "memory", key, "raw_bytes") for _, key in memory]
    series.append(("raw JSON", raw))
    for label, r in runs:
        series.append((f"Redis: {label}", [get(r, "memory", key, "redis_bytes") for _, key in memory]))
    grouped_bars(ax, [name for name, _ in memory], series, "bytes per entry")
    ax.set_title("Redis memory per entry (INFO used_memory delta / entries)")
    fig.tight_layout()
    fig.savefig(out / "memory.png", dpi=110)

    kinds = [
        ("EVALSHA notify", ("baseline", "cpu_us_per_notify")),
        ("HTTP notify\n(API only)", ("notify_api_only", "cpu_us_per_notify")),
        ("notify + delivery", ("notify", "cpu_us_per_notify_and_delivery")),
    ]
    processes = [("herald", "Herald"), ("redis", "Redis"), ("load_generator", "load generator + receiver")]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / max(1, len(runs))
    colors = ["tab:blue", "tab:red", "tab:gray"]
    for r, (label, run) in enumerate(runs):
        bottoms = [0.0] * len(kinds)
        for (key, name), color in zip(processes, colors):
            values = [get(run, *path, key) or 0 for _, path in kinds]
            xs = [k + r * width - 0.4 + width / 2 for k in range(len(kinds))]
            ax.bar(xs, values, width, bottom=bottoms, color=color, alpha=1.0 - 0.35 * r,
                   label=f"{name} ({label})", edgecolor="white")
            bottoms = [b + v for b, v in zip(bottoms, values)]
        for x, total in zip(xs, bottoms):
            ax.annotate(f"{label}\n{total:.0f}", (x, total), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(kinds)))
    ax.set_xticklabels([name for name, _ in kinds])
    ax.set_ylabel("CPU microseconds per operation")
    ax.set_title("Where the cores go, per operation (from /proc/<pid>/stat)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "cpu.png", dpi=110)

    fanout_runs = [(label, r["fanout"]) for label, r in runs if "fanout" in r]
    if fanout_runs:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        grouped_bars(ax, ["notify response", "first delivery", "last delivery"],
                     [(label, [f["notify_response_ms"], f["first_delivery_ms"], f["last_delivery_ms"]])
                      for label, f in fanout_runs],
                     "ms after the notify was sent")
        ax.set_title(f"Fan-out: one event, {fanout_runs[-1][1]['waiters']:,} waiters")
        fig.tight_layout()
        fig.savefig(out / "fanout.png", dpi=110)
    print(f"plots and summary.md written to {out}")


if __name__ == "__main__":
    main()
