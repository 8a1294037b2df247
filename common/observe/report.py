"""`shardmill report JOB`: one self-contained HTML file (no network needed to open it).

The task stream (one lane per worker slot), the shard-duration histogram, each worker's
utilisation, every retried or failed shard with its story, and the measured parallel efficiency.
"""

from __future__ import annotations

import html
import math

import jinja2
from markupsafe import Markup

from shardmill.observe.timeline import Bar, Timeline

COLOURS = {
    "ok": "#3a7d44",
    "running": "#4a78c2",
    "lost": "#c0392b",
    "timeout": "#d68910",
    "superseded": "#999999",
}
OTHER = "#8e44ad"  # error, crash, cancelled: every other outcome
LANE, LABEL, WIDTH = 18, 210, 900

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("shardmill.observe", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
    undefined=jinja2.StrictUndefined,
)


def render_report(timeline: Timeline) -> str:
    job = timeline.job
    stories = [s for s in job.shards or [] if len(s.history) > 1 or s.state != "done"]
    return _env.get_template("report.html.j2").render(
        job=job,
        timeline=timeline,
        efficiency=timeline.efficiency(),
        stream=Markup(task_stream_svg(timeline)),
        histogram=Markup(histogram_svg(timeline.durations())),
        workers=timeline.per_worker(),
        stories=stories,
        colours={**COLOURS, "other": OTHER},
    )


def colour(outcome: str) -> str:
    return COLOURS.get(outcome, OTHER)


def task_stream_svg(timeline: Timeline) -> str:
    """Lanes top to bottom, time left to right; a bar per attempt with its story as a tooltip."""
    span = timeline.length or 1e-9
    scale = (WIDTH - LABEL - 10) / span
    height = LANE * max(1, len(timeline.lanes)) + 24
    row = {lane: i for i, lane in enumerate(timeline.lanes)}
    parts = [f'<svg class="stream" width="{WIDTH}" height="{height}" role="img">']
    for (worker, slot), i in row.items():
        y = i * LANE + 13
        parts.append(f'<text x="2" y="{y}" class="lane">{html.escape(worker)} #{slot}</text>')
    for bar in timeline.bars:
        parts.append(_bar(bar, row[(bar.worker, bar.slot)] * LANE, scale))
    axis_y = height - 6
    for t in _ticks(span):
        x = LABEL + t * scale
        parts.append(f'<text x="{x:.1f}" y="{axis_y}" class="tick">{t:g} s</text>')
    parts.append("</svg>")
    return "".join(parts)


def _bar(bar: Bar, y: int, scale: float) -> str:
    x, w = LABEL + bar.start * scale, max(1.0, bar.seconds * scale)
    tip = f"shard {bar.shard} attempt {bar.attempt} on {bar.worker}: {bar.outcome}"
    tip += f", {bar.seconds:.3f} s" + (f" ({bar.error})" if bar.error else "")
    return (
        f'<rect x="{x:.1f}" y="{y + 2}" width="{w:.1f}" height="{LANE - 4}" '
        f'fill="{colour(bar.outcome)}" data-outcome="{html.escape(bar.outcome)}">'
        f"<title>{html.escape(tip)}</title></rect>"
    )


def _ticks(span: float) -> list[float]:
    step = 10 ** math.floor(math.log10(span / 2)) if span > 0 else 1
    while span / step > 8:
        step *= 2
    return [i * step for i in range(int(span / step) + 1)]


def histogram_svg(durations: list[float], bins: int = 20) -> str:
    if not durations:
        return "<p>No merged shard yet.</p>"
    low, high = min(durations), max(durations)
    width = (high - low) / bins or 1e-9
    counts = [0] * bins
    for d in durations:
        counts[min(bins - 1, int((d - low) / width))] += 1
    top, bar_w, h = max(counts), 30, 120
    parts = [f'<svg class="hist" width="{bins * bar_w + 20}" height="{h + 30}" role="img">']
    for i, n in enumerate(counts):
        bh = h * n / top
        tip = f"{low + i * width:.3f}-{low + (i + 1) * width:.3f} s: {n} shard(s)"
        parts.append(
            f'<rect x="{i * bar_w + 10}" y="{h - bh:.1f}" width="{bar_w - 2}" height="{bh:.1f}" '
            f'fill="#4a78c2"><title>{tip}</title></rect>'
        )
    parts.append(f'<text x="10" y="{h + 20}" class="tick">{low:.3f} s</text>')
    parts.append(f'<text x="{bins * bar_w - 40}" y="{h + 20}" class="tick">{high:.3f} s</text>')
    parts.append("</svg>")
    return "".join(parts)
