"""The monthly "Nos & Whys" as a self-contained HTML page (charts inline as SVG, no
network needed to view it) and as Markdown, from `projections.report.nos_and_whys`."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: render to memory
matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: smaller, searchable
matplotlib.rcParams["svg.hashsalt"] = "ledger"  # the same figures give the same page

import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

TEMPLATES = Path(__file__).parent / "templates" / "report"
OUTCOME_COLOURS = {
    "provisional_yes": "#2e7d32", "scaled": "#1b5e20", "conditional_no": "#f9a825",
    "hold": "#ef6c00", "decline": "#c62828", "withdrawn": "#757575",
}  # fmt: skip


def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        undefined=StrictUndefined,
        autoescape=select_autoescape(["html"]),  # every value from the ledger is escaped
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _svg(figure: Any) -> str:
    out = io.StringIO()
    figure.savefig(out, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(figure)
    text = out.getvalue()
    return text[text.index("<svg") :]  # the element alone, to inline it


def trend_chart(report: dict[str, Any]) -> str:
    """Median and p90 business days to decide over six months, against the target."""
    trend = report["days_to_decide"]["trend"]
    months = [t["month"] for t in trend]
    figure, axes = plt.subplots(figsize=(7, 3))
    for key, label, style in (
        ("median_business_days", "median", "-o"),
        ("p90_business_days", "p90", "--s"),
    ):
        values = [t[key] if t[key] is not None else float("nan") for t in trend]
        axes.plot(range(len(months)), values, style, label=label)
    axes.set_xticks(range(len(months)), months)  # every month, decided in or not
    axes.set_xlim(-0.5, len(months) - 0.5)
    target = report["days_to_decide"]["target_business_days"]
    axes.axhline(target, color="#c62828", linewidth=1, label=f"target ({target})")
    axes.set_ylabel("business days to decide")
    axes.set_ylim(bottom=0)
    axes.legend(loc="upper left", fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    return _svg(figure)


def outcome_chart(report: dict[str, Any]) -> str:
    """The month's decisions by outcome."""
    by_outcome = report["by_outcome"]
    figure, axes = plt.subplots(figsize=(7, 2.4))
    names = list(by_outcome) or ["none"]
    counts = list(by_outcome.values()) or [0]
    colours = [OUTCOME_COLOURS.get(n, "#607d8b") for n in names]
    axes.barh(names, counts, color=colours)
    axes.invert_yaxis()
    axes.set_xlabel("decisions")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    for y, count in enumerate(counts):
        axes.text(count, y, f" {count}", va="center", fontsize=8)
    return _svg(figure)


def html(report: dict[str, Any]) -> str:
    charts = {"trend": trend_chart(report), "outcomes": outcome_chart(report)}
    return _environment().get_template("nos_and_whys.html").render(r=report, charts=charts)


def markdown(report: dict[str, Any]) -> str:
    return _environment().get_template("nos_and_whys.md").render(r=report)
