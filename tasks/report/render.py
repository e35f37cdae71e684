"""The report written: Markdown from the templates (`templates/report.md.j2` and its parts), the
HTML page around it, and the report folder (report.md, report.html, runs.csv, figures/*.png).
The numbers come from `tasks.report.analysis`, the table rows from `tasks.report.rows`, the
figures from `tasks.report.figures`; reading MLflow and logging the report are
`tasks.report.mlflow_io`'s.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import markdown
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from tasks.report import rows
from tasks.report.analysis import CampaignAnalysis
from tasks.report.figures import write_figures

# Still called as render.query_runs / render.load_predictions by tests/test_retrain.py; they live in
# tasks.report.mlflow_io.
from tasks.report.mlflow_io import load_predictions as load_predictions
from tasks.report.mlflow_io import query_runs as query_runs

TEMPLATES = Environment(
    loader=PackageLoader("tasks.report", "templates"),
    autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
TEMPLATES.filters.update(rows.FILTERS)
TEMPLATES.globals.update(rows.GLOBALS)


def render_markdown(analysis: CampaignAnalysis, source: str = "", figures: dict[str, Path] | None = None,
                    base: Path | None = None, generated: datetime | None = None) -> str:
    """The whole report. `figures` (from `write_figures`) are linked relative to `base`; without
    them the report has no images (the Prefect artifact)."""
    runs = analysis.runs
    trials = runs[runs["run_kind"] == "trial"]
    counts = {
        "trials": len(trials),
        "complete": int(trials["complete"].sum()),
        "pruned": int((trials["state"] == "pruned").sum()),
        "failed": int((trials["state"] == "failed").sum()),
        "unverified": int((trials["state"] == "unverified").sum()),
        "incomplete": int((trials["state"] == "incomplete").sum()),
        "baselines": int((runs["run_kind"] == "baseline").sum()),
    }
    sections = ["Verification checklist"] + [f"Horizon h{h.horizon}" for h in analysis.horizons]
    sections += [f"Study {s.name}" for s in analysis.studies] + ["Methods"]
    text = TEMPLATES.get_template("report.md.j2").render(
        a=analysis, runs=runs, counts=counts, source=source, sections=sections, figures=figures, base=base,
        stamp=(generated or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC"),
    )  # fmt: skip
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"


_NUMERIC_CELL = re.compile(r"<td>([-+]?(?:\d[\d.,e+-]*|n/a|\[[-+\d., ]+\]|\d+/\d+))</td>")
_HEADER_CELL = re.compile(r"<th>([^<]*)</th>")


def _breakable_header(match: re.Match) -> str:
    """A header may wrap after an underscore or slash (weight_<wbr>decay), never mid-word: wide
    tables then fit the page instead of being cut."""
    return "<th>" + re.sub(r"([_/])", r"\1<wbr>", match.group(1)) + "</th>"


def render_html(markdown_text: str, title: str = "Cross-budget HPO report") -> str:
    """The Markdown report as one self-contained HTML page (figures linked, not embedded)."""
    body = markdown.markdown(markdown_text, extensions=["tables", "toc", "sane_lists"], output_format="html")
    body = _NUMERIC_CELL.sub(r'<td class="num">\1</td>', body)
    body = _HEADER_CELL.sub(_breakable_header, body)
    return TEMPLATES.get_template("report.html.j2").render(title=title, body=Markup(body))


@dataclass
class ReportFiles:
    out: Path
    markdown: Path
    html: Path
    runs_csv: Path
    figures: dict[str, Path] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def write_report(analysis: CampaignAnalysis, out: Path, source: str = "") -> ReportFiles:
    """report.md, report.html, runs.csv and figures/*.png under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    figures = write_figures(analysis, out / "figures")
    plotted = time.perf_counter()
    text = render_markdown(analysis, source, figures, base=out)
    files = ReportFiles(out, out / "report.md", out / "report.html", out / "runs.csv", figures)
    files.markdown.write_text(text, encoding="utf-8")
    files.html.write_text(render_html(text), encoding="utf-8")
    analysis.runs.drop(columns=["complete"]).to_csv(files.runs_csv, index=False)
    files.seconds = {"figures": plotted - started, "render": time.perf_counter() - plotted}
    return files
