"""`shardmill report JOB`: one self-contained HTML file (no network needed to open it).

The task stream (one lane per worker slot), the shard-duration histogram, each worker's
utilisation, every retried or failed shard with its story, and the measured parallel efficiency.
"""

from __future__ import annotations

import html
import math

import jinja2
from markupsafe import Markup

from shardmill.observe import outcomes
from shardmill.observe.timeline import Bar, Timeline

LANE, LABEL, WIDTH = 18, 230, 900

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
        legend=outcomes.legend(),
        lost=set(timeline.lost_workers()),
    )


def task_stream_svg(timeline: Timeline) -> str:
    """Lanes top to bottom, time left to right; a bar per attempt with its story as a tooltip."""
    span = timeline.length or 1e-9
    scale = (WIDTH - LABEL - 10) / span
    height = LANE * max(1, len(timeline.lanes)) + 24
    row = {lane: i for i, lane in enumerate(timeline.lanes)}
    parts = [f'<svg class="stream" width="{WIDTH}" height="{height}" role="img">']
    lost = set(timeline.lost_workers())
    for (worker, slot), i in row.items():
        y, mark = i * LANE + 13, " (lost)" if worker in lost else ""
        parts.append(f'<text x="2" y="{y}" class="lane">{html.escape(worker)} #{slot}{mark}</text>')
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
        f'fill="{outcomes.colour(bar.outcome)}" data-outcome="{html.escape(bar.outcome)}">'
        f"<title>{html.escape(tip)}</title></rect>"
    )


def _ticks(span: float, most: int = 8) -> list[float]:
    """Round steps (1, 2 or 5 times a power of ten) from 0 past `span`, at most about `most`."""
    raw = span / most if span > 0 else 1.0
    step = 10 ** math.floor(math.log10(raw))
    step = next(m * step for m in (1, 2, 5, 10) if m * step >= raw)
    return [round(i * step, 9) for i in range(int(span / step + 1e-9) + 1)]


HIST_W, HIST_H, HIST_LEFT, HIST_BOTTOM, HIST_TOP = 640, 180, 48, 40, 16


def histogram_svg(durations: list[float], bins: int = 20) -> str:
    """Shard durations: seconds along the bottom axis, shards up the left one, each bar's
    count on top of it."""
    if not durations:
        return "<p>No merged shard yet.</p>"
    low, high = min(durations), max(durations)
    width = (high - low) / bins or 1e-9
    counts = [0] * bins
    for d in durations:
        counts[min(bins - 1, int((d - low) / width))] += 1
    top, bar_w = max(counts), (HIST_W - HIST_LEFT) / bins
    height = HIST_H + HIST_BOTTOM + HIST_TOP
    parts = [f'<svg class="hist" width="{HIST_W + 20}" height="{height}" role="img">']
    parts.append(f'<g transform="translate(0 {HIST_TOP})">')  # room for the top bar's count
    parts += _hist_axes(low, high, top)
    for i, n in enumerate(counts):
        bh = HIST_H * n / top
        x, y = HIST_LEFT + i * bar_w, HIST_H - bh
        tip = f"{low + i * width:.3f}-{low + (i + 1) * width:.3f} s: {n} shard(s)"
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" height="{bh:.1f}" '
            f'fill="#1f77b4"><title>{tip}</title></rect>'
        )
        if n:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{y - 3:.1f}" class="count" '
                f'text-anchor="middle">{n}</text>'
            )
    parts.append("</g></svg>")
    return "".join(parts)


def _hist_axes(low: float, high: float, top: int) -> list[str]:
    """The histogram's axes: ticks in seconds below, in shards at the left, and their titles."""
    right, span = HIST_W, (high - low) or 1e-9
    parts = [
        f'<line class="axis" x1="{HIST_LEFT}" y1="{HIST_H}" x2="{right}" y2="{HIST_H}"/>',
        f'<line class="axis" x1="{HIST_LEFT}" y1="0" x2="{HIST_LEFT}" y2="{HIST_H}"/>',
    ]
    for t in _ticks(span, 6):
        x = HIST_LEFT + (right - HIST_LEFT) * t / span
        parts.append(
            f'<text x="{x:.1f}" y="{HIST_H + 14}" class="tick" text-anchor="middle">'
            f"{low + t:.3g}</text>"
        )
    for n in _ticks(top, 4):
        if n == int(n) and n <= top:
            y = HIST_H - HIST_H * n / top
            parts.append(
                f'<text x="{HIST_LEFT - 5}" y="{y + 4:.1f}" class="tick" text-anchor="end">'
                f"{int(n)}</text>"
            )
    parts.append(
        f'<text x="{(HIST_LEFT + right) / 2}" y="{HIST_H + 32}" class="tick" '
        'text-anchor="middle">seconds a shard ran</text>'
    )
    parts.append(
        f'<text x="12" y="{HIST_H / 2}" class="tick" text-anchor="middle" '
        f'transform="rotate(-90 12 {HIST_H / 2})">shards</text>'
    )
    return parts
