"""Charts drawn on the server as SVG (no script): grouped bars of the points flows per period,
and the cross-brand matrix as a heat map. Every text is escaped; sizes are in SVG units and the
drawing scales with the page (``viewBox``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from api.console.formats import points

#: The series of the flows chart, in the order drawn, with their CSS class.
SERIES = (("issued", "Issued"), ("redeemed", "Redeemed"), ("expired", "Expired"))
WIDTH = 760
HEIGHT = 260
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 10, 30, 40


@dataclass(frozen=True, slots=True)
class PeriodBar:
    """One period of the flows chart."""

    label: str
    issued: int
    redeemed: int
    expired: int


def _ticks(top: int) -> list[int]:
    if top <= 0:
        return [0]
    step = 1
    while top / step > 5:
        for factor in (2, 5, 10):
            if top / (step * factor) <= 5:
                step *= factor
                break
        else:
            step *= 10
    return list(range(0, top + step, step))


def flows_chart(bars: Sequence[PeriodBar]) -> Markup:
    """Grouped bars: issued, redeemed and expired points per period, oldest on the left."""
    ticks = _ticks(max([max(b.issued, b.redeemed, b.expired) for b in bars] or [0]))
    scale_top = ticks[-1] or 1
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        'aria-label="Points issued, redeemed and expired per period">'
    ]
    for tick in ticks:
        y = _TOP + plot_h - plot_h * tick / scale_top
        parts.append(
            f'<line class="grid" x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="axis" x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(points(tick))}</text>"
        )
    group_w = plot_w / max(len(bars), 1)
    bar_w = min(group_w * 0.8 / len(SERIES), 28)
    for i, bar in enumerate(bars):
        x0 = _LEFT + i * group_w + (group_w - bar_w * len(SERIES)) / 2
        for j, (name, title) in enumerate(SERIES):
            value = getattr(bar, name)
            h = plot_h * value / scale_top
            parts.append(
                f'<rect class="bar {name}" x="{x0 + j * bar_w:.1f}" y="{_TOP + plot_h - h:.1f}" '
                f'width="{bar_w - 2:.1f}" height="{h:.1f}"><title>{escape(bar.label)}: '
                f"{escape(title)} {escape(points(value))}</title></rect>"
            )
        parts.append(
            f'<text class="axis" x="{_LEFT + (i + 0.5) * group_w:.1f}" y="{HEIGHT - _BOTTOM + 16}"'
            f' text-anchor="middle">{escape(bar.label)}</text>'
        )
    for j, (name, title) in enumerate(SERIES):
        x = _LEFT + j * 110
        parts.append(
            f'<rect class="bar {name}" x="{x}" y="8" width="12" height="12"/>'
            f'<text class="legend" x="{x + 16}" y="18">{escape(title)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 (every text above is escaped)


@dataclass(frozen=True, slots=True)
class HeatCell:
    """Points issued by ``row`` and redeemed at ``column``."""

    row: str
    column: str
    points: int


_CELL_W, _CELL_H, _LABEL_W, _HEAD_H = 120, 36, 170, 44


def heat_map(rows: Sequence[str], columns: Sequence[str], cells: Sequence[HeatCell]) -> Markup:
    """The cross-brand matrix: issuers down, redeemers across, darker for more points; the
    number is written in every cell, so the colour only helps the eye."""
    values = {(c.row, c.column): c.points for c in cells}
    top = max(values.values(), default=0) or 1
    width = _LABEL_W + _CELL_W * len(columns) + 4
    height = _HEAD_H + _CELL_H * len(rows) + 4
    parts = [
        f'<svg class="heat" viewBox="0 0 {width} {height}" width="{width}" role="img" '
        'aria-label="Points issued by each partner (rows) and redeemed at each (columns)">'
    ]
    for j, column in enumerate(columns):
        x = _LABEL_W + j * _CELL_W + _CELL_W / 2
        parts.append(
            f'<text class="axis" x="{x:.1f}" y="{_HEAD_H - 10}" text-anchor="middle">'
            f"{escape(_clip(column))}<title>{escape(column)}</title></text>"
        )
    for i, row in enumerate(rows):
        y = _HEAD_H + i * _CELL_H
        parts.append(
            f'<text class="axis" x="{_LABEL_W - 8}" y="{y + _CELL_H / 2 + 4:.1f}" '
            f'text-anchor="end">{escape(_clip(row))}<title>{escape(row)}</title></text>'
        )
        for j, column in enumerate(columns):
            value = values.get((row, column), 0)
            shade = 0.08 + 0.8 * value / top if value else 0.0
            text_class = "cell dark" if shade > 0.5 else "cell"
            x = _LABEL_W + j * _CELL_W
            parts.append(
                f'<rect class="heat-cell" x="{x}" y="{y}" width="{_CELL_W - 2}" '
                f'height="{_CELL_H - 2}" fill-opacity="{shade:.2f}"/>'
                f'<text class="{text_class}" x="{x + _CELL_W - 10}" y="{y + _CELL_H / 2 + 4:.1f}"'
                f' text-anchor="end">{escape(points(value))}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 (every text above is escaped)


def _clip(text: str, limit: int = 18) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"
