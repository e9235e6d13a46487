"""The report: PNG plots, a Markdown page and a self-contained HTML page (plots inlined) from one run's
records, summary, and, when run, the capacity search and the quality check.

Plots: TTFA CDF per target; TTFA p50/p95/p99 vs concurrency; underrun vs concurrency; the server's stage
breakdown (p50 per stage) per concurrency level.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from loadtest.records import STAGES, TurnRecord  # noqa: E402

COLUMNS = ("target", "level", "sessions", "refused", "turns", "errors", "TTFA p50", "p95", "p99",
           *(s.removesuffix("_ms") + " p50" for s in STAGES), "RTF p50", "underrun share", "underrun p95 ms",
           "continuity", "reply s p50")


def _levels(summary: dict, target: str) -> list[tuple[float, dict]]:
    return sorted((float(k), v) for k, v in summary[target]["levels"].items())


def plot_ttfa_cdf(records: list[TurnRecord], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for target in sorted({r.target for r in records}):
        values = np.sort([r.ttfa_ms for r in records if r.target == target and r.ok and r.ttfa_ms is not None])
        if len(values):
            ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post", label=target)
    ax.set(xlabel="time to first audio (ms)", ylabel="share of turns", title="TTFA CDF")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_ttfa_levels(summary: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for target in summary:
        levels = _levels(summary, target)
        for point, style in (("p50", "-o"), ("p95", "--s"), ("p99", ":^")):
            ys = [s["ttfa_ms"][point] for _, s in levels]
            ax.plot([x for x, _ in levels], [np.nan if y is None else y for y in ys], style, label=f"{target} {point}")
    ax.set(xlabel="concurrent calls", ylabel="TTFA (ms)", title="TTFA vs concurrency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_underrun_levels(summary: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for target in summary:
        levels = _levels(summary, target)
        ys = [np.nan if s["underrun_turn_share"] is None else 100 * s["underrun_turn_share"] for _, s in levels]
        ax.plot([x for x, _ in levels], ys, "-o", label=target)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--", label="1% of turns")
    ax.set(xlabel="concurrent calls", ylabel="turns with underrun (%)", title="Underrun vs concurrency")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_stages(summary: dict, path: Path) -> Path:
    targets = list(summary)
    fig, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), 4), squeeze=False)
    for ax, target in zip(axes[0], targets):
        levels = _levels(summary, target)
        xs = np.arange(len(levels))
        bottom = np.zeros(len(levels))
        for stage in STAGES:
            ys = np.array([s["stages_ms"][stage]["p50"] or 0.0 for _, s in levels])
            ax.bar(xs, ys, bottom=bottom, label=stage.removesuffix("_ms"))
            bottom += ys
        ax.set_xticks(xs, [f"{x:g}" for x, _ in levels])
        ax.set(xlabel="concurrent calls", ylabel="ms (p50 per stage)", title=f"{target}: server stages")
        ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.0f}"
    return str(value)


def summary_rows(summary: dict) -> list[list[str]]:
    rows = []
    for target in summary:
        for level, s in _levels(summary, target):
            stages = [s["stages_ms"][st]["p50"] for st in STAGES]
            rows.append([target, f"{level:g}", s["sessions"], s["refused"], s["turns"],
                         sum(s["errors_by_status"].values()), *s["ttfa_ms"].values(), *stages, s["server_rtf_p50"],
                         s["underrun_turn_share"], s["underrun_ms"]["p95"], s["continuity"], s["reply_audio_s"]["p50"]])
    return [[_fmt(v) for v in row] for row in rows]


def _md_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _html_table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(out: Path, records: list[TurnRecord], summary: dict, title: str, context: dict,
                 capacity: list[dict] | None = None, quality: list[dict] | None = None) -> dict[str, Path]:
    """Writes report.md, report.html and the PNGs under `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    plots = {
        "TTFA CDF": plot_ttfa_cdf(records, out / "ttfa_cdf.png"),
        "TTFA vs concurrency": plot_ttfa_levels(summary, out / "ttfa_vs_concurrency.png"),
        "Underrun vs concurrency": plot_underrun_levels(summary, out / "underrun_vs_concurrency.png"),
        "Server stages per concurrency": plot_stages(summary, out / "stages_per_concurrency.png"),
    }
    sections: list[tuple[str, str, object]] = [("Run", "pre", json.dumps(context, indent=2)),
                                               ("Summary per target and level", "table", (COLUMNS, summary_rows(summary)))]
    for result in capacity or []:
        rows = [[str(s["concurrency"]), "held" if s["passed"] else "streamed, late" if s["streaming"] else "failed", s["why"]]
                for s in result["steps"]]
        text = (f"capacity of {result['target']}: {result['capacity']} concurrent real-time calls (SLO p95 TTFA "
                f"{result['slo_ms']:.0f} ms, underrun <= 1% of turns); streamed without gaps, TTFA aside: "
                f"{result['realtime_calls']}")
        sections.append((text, "table", (("concurrency", "verdict", "why"), rows)))
        if "saturated_first" in result:
            sections.append(("Saturated first", "pre", json.dumps(result["saturated_first"], indent=2)))
    for result in quality or []:
        sections.append((f"Quality under load: {result['target']}", "pre", json.dumps(result, indent=2)))
    md = [f"# {title}", ""]
    body = [f"<h1>{html.escape(title)}</h1>"]
    for heading, kind, content in sections:
        md += [f"## {heading}", ""]
        body.append(f"<h2>{html.escape(heading)}</h2>")
        if kind == "table":
            md.append(_md_table(*content))
            body.append(_html_table(*content))
        else:
            md.append(f"```\n{content}\n```")
            body.append(f"<pre>{html.escape(content)}</pre>")
        md.append("")
    for name, path in plots.items():
        md += [f"## {name}", "", f"![{name}]({path.name})", ""]
        data = base64.b64encode(path.read_bytes()).decode()
        body.append(f"<h2>{html.escape(name)}</h2><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>")
    style = "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}"
    (out / "report.md").write_text("\n".join(md))
    (out / "report.html").write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                                     f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
    return {"markdown": out / "report.md", "html": out / "report.html", **{k: v for k, v in plots.items()}}
