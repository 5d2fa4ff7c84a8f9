"""The monthly "Nos & Whys" as a self-contained HTML page (charts inline as SVG, no
network needed to view it) and as Markdown, from `projections.report.nos_and_whys`."""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

if TYPE_CHECKING:
    from matplotlib.figure import Figure

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


@functools.cache
def _matplotlib() -> Any:
    """matplotlib, loaded at the first chart: every process that imports this module (the
    API) would otherwise carry it (~45 MB with numpy, ~0.4 s of its start) for a page
    most of them never draw. Figures are made with `Figure`, not pyplot: no global
    figure registry, so two pages drawn at once in two threads keep apart."""
    import matplotlib
    import matplotlib.figure
    import matplotlib.ticker

    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: smaller, searchable
    matplotlib.rcParams["svg.hashsalt"] = "ledger"  # the same figures give the same page
    return matplotlib


def _figure(width: float, height: float) -> tuple[Figure, Any]:
    figure = _matplotlib().figure.Figure(figsize=(width, height))
    return figure, figure.subplots()


def _svg(figure: Figure) -> str:
    out = io.StringIO()
    figure.savefig(out, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = out.getvalue()
    return text[text.index("<svg") :]  # the element alone, to inline it


def trend_chart(report: dict[str, Any]) -> str:
    """Median and p90 business days to decide over six months, against the target."""
    trend = report["days_to_decide"]["trend"]
    months = [t["month"] for t in trend]
    figure, axes = _figure(7, 3)
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
    figure, axes = _figure(7, 2.4)
    names = list(by_outcome) or ["none"]
    counts = list(by_outcome.values()) or [0]
    colours = [OUTCOME_COLOURS.get(n, "#607d8b") for n in names]
    axes.barh(names, counts, color=colours)
    axes.invert_yaxis()
    axes.set_xlabel("decisions")
    axes.xaxis.set_major_locator(_matplotlib().ticker.MaxNLocator(integer=True))
    for y, count in enumerate(counts):
        axes.text(count, y, f" {count}", va="center", fontsize=8)
    return _svg(figure)


def html(report: dict[str, Any]) -> str:
    charts = {"trend": trend_chart(report), "outcomes": outcome_chart(report)}
    return _environment().get_template("nos_and_whys.html").render(r=report, charts=charts)


def markdown(report: dict[str, Any]) -> str:
    return _environment().get_template("nos_and_whys.md").render(r=report)
