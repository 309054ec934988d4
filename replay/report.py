"""``report.json`` -> a Markdown table and PNG plots (``prerank report`` and the end of a replay).

>>> table = markdown_table({"cascade": {"auc_click": 0.61, "requests": 10}})
>>> table.splitlines()[2]
'| cascade | 0.610 | nan | nan | nan | nan | nan | nan | nan | nan | nan | nan | nan | 10 | 0 |'
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

COLUMNS = (
    "auc_click", "gauc_click", "auc_long_view", "gauc_long_view", "consistency_recall_at_10",
    "consistency_recall_at_50", "consistency_recall_at_100", "consistency_recall_at_200", "ndcg_at_10",
    "hit_rate_long_view_at_100", "zero_row_ratio", "export_size_reduction", "requests", "samples_learned",
)


def _cell(value) -> str:
    if isinstance(value, bool) or value is None:
        return "nan" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def markdown_table(report: Mapping[str, Mapping]) -> str:
    header = "| arm | " + " | ".join(COLUMNS) + " |"
    rule = "|" + "---|" * (len(COLUMNS) + 1)
    rows = [
        "| " + name + " | " + " | ".join(_cell(result.get(c, 0 if c == "samples_learned" else float("nan")))
                                       for c in COLUMNS) + " |"
        for name, result in report.items()
    ]
    return "\n".join([header, rule, *rows])


def rate_table(report: Mapping[str, Mapping]) -> str:
    """Each streamed mode's rate and where its CPU went: the driver, and every worker by its agents
    (share of one core, ms per request); "" when no mode has the figures.

    >>> print(rate_table({"cascade": {"requests_per_s": 18.0, "round_trip_ms_p50": 516.0,
    ...     "driver": {"cpu_share": 0.09, "cpu_ms_per_request": 5.0},
    ...     "workers_cpu": {"ranker": {"cpu_share": 0.2, "cpu_ms_per_request": 11.0}}}}))
    | mode | requests/s | round trip p50 ms | driver | ranker |
    |---|---|---|---|---|
    | cascade | 18.0 | 516 | 9% / 5.0 ms | 20% / 11.0 ms |
    """
    streamed = {name: result for name, result in report.items() if "workers_cpu" in result}
    if not streamed:
        return ""
    agents = list(dict.fromkeys(a for result in streamed.values() for a in result["workers_cpu"]))

    def cpu(figures: Mapping | None) -> str:
        if not figures:
            return "-"
        return f"{figures['cpu_share']:.0%} / {figures['cpu_ms_per_request']:.1f} ms"

    lines = ["| mode | requests/s | round trip p50 ms | driver | " + " | ".join(agents) + " |",
             "|" + "---|" * (len(agents) + 4)]
    for name, result in streamed.items():
        lines.append(f"| {name} | {result.get('requests_per_s', float('nan')):.1f} | "
                     f"{result.get('round_trip_ms_p50', float('nan')):.0f} | {cpu(result.get('driver'))} | "
                     + " | ".join(cpu(result["workers_cpu"].get(a)) for a in agents) + " |")
    return "\n".join(lines)


def sweep_table(sweep: Mapping) -> str:
    """The l1 sweep as Markdown.

    >>> print(sweep_table({"requests": 9, "results": [{"l1": 0.5, "zero_row_ratio": 0.7,
    ...     "export_size_reduction": 0.3, "auc_long_view": 0.7, "auc_loss_vs_smallest_l1": 0.01}]}))
    FTRL l1 sweep (impressions mode, 9 requests, in process):
    <BLANKLINE>
    | l1 | zero_row_ratio | export_size_reduction | auc_long_view | auc_loss_vs_smallest_l1 |
    |---|---|---|---|---|
    | 0.5 | 0.700 | 0.300 | 0.700 | 0.010 |
    """
    columns = ("zero_row_ratio", "export_size_reduction", "auc_long_view", "auc_loss_vs_smallest_l1")
    rows = [f"| {r['l1']:g} | " + " | ".join(_cell(float(r[c])) for c in columns) + " |" for r in sweep["results"]]
    return "\n".join([f"FTRL l1 sweep (impressions mode, {sweep['requests']} requests, in process):", "",
                      "| l1 | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1), *rows])


def plot(report_dir: Path, report: Mapping[str, Mapping], run: Mapping | None = None) -> list[Path]:
    """PNG plots: quality side by side, metrics over replay time, scorer latency histogram,
    zero-row ratio against l1, cache hit rate by tier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    names = list(report)
    metrics = ["auc_click", "auc_long_view", "gauc_long_view", "consistency_recall_at_100"]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        values = [float(report[name].get(m, float("nan"))) for m in metrics]
        ax.bar([i + j * width for i in range(len(metrics))], values, width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(metrics))], metrics)
    ax.set_ylim(0, 1)
    ax.set_title("Progressive quality on the evaluated days")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(report_dir / "quality.png")
    fig.savefig(written[-1])
    plt.close(fig)

    series = {name: r["over_time"] for name, r in report.items() if r.get("over_time")}
    if series:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for name, points in series.items():
            hours = [(p["bucket_start_ms"] - points[0]["bucket_start_ms"]) / 3_600_000 for p in points]
            for ax, metric in zip(axes, ("auc_long_view", "consistency_recall_at_100")):
                values = [p[metric] if p[metric] is not None else float("nan") for p in points]
                ax.plot(hours, values, marker="o", label=name)
                ax.set_title(metric)
                ax.set_xlabel("event time since the first evaluated bucket (h)")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        written.append(report_dir / "over_time.png")
        fig.savefig(written[-1])
        plt.close(fig)

    latencies = (run or {}).get("latencies_ms", {})
    if any(latencies.values()):
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, values in latencies.items():
            if values:
                ax.hist(values, bins=50, alpha=0.6, label=name)
        ax.set_xlabel("scorer latency per request (ms)")
        ax.set_ylabel("requests")
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(report_dir / "latency.png")
        fig.savefig(written[-1])
        plt.close(fig)

    sparsity = (run or {}).get("l1_sweep")
    if sparsity and sparsity.get("results"):
        from replay.sparsity import plot as plot_sparsity

        streamed = {name: {"l1": r["ftrl_l1"], "zero_row_ratio": r["zero_row_ratio"]}
                    for name, r in report.items() if r.get("ftrl_l1") is not None}
        written.append(report_dir / "zero_rows_vs_l1.png")
        plot_sparsity(sparsity["results"], written[-1], streamed)

    tiers = {name: r.get("cache_tiers") for name, r in report.items() if r.get("cache_tiers")}
    if tiers:
        fig, ax = plt.subplots(figsize=(7, 4))
        for j, (name, counts) in enumerate(tiers.items()):
            total = max(1, sum(counts.values()))
            bottom = 0.0
            for tier in ("local", "computed"):
                share = counts.get(tier, 0) / total
                ax.bar(j, share, bottom=bottom, label=tier if j == 0 else None)
                bottom += share
        ax.set_xticks(range(len(tiers)), list(tiers))
        ax.set_ylabel("share of item vectors")
        ax.set_title("Scorer cache hit rate by tier")
        ax.legend()
        fig.tight_layout()
        written.append(report_dir / "cache_tiers.png")
        fig.savefig(written[-1])
        plt.close(fig)
    return written


def write_report(report_dir: Path, report: Mapping[str, Mapping] | None = None) -> str:
    """Write ``report.md`` and the plots next to ``report.json``; return the Markdown table."""
    report_dir = Path(report_dir)
    if report is None:
        report = json.loads((report_dir / "report.json").read_text())
    run_path = report_dir / "run.json"
    run = json.loads(run_path.read_text()) if run_path.exists() else None
    table = markdown_table(report)
    rates = rate_table(report)
    if rates:
        table += "\n\nRate and CPU (share of one core / ms per request):\n\n" + rates
    if run and run.get("l1_sweep"):
        table += "\n\n" + sweep_table(run["l1_sweep"])
    plots = plot(report_dir, report, run)
    (report_dir / "report.md").write_text(table + "\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n")
    return table + "\n\nplots: " + ", ".join(str(p) for p in plots)
