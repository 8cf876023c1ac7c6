"""The daily chart of a flagged user's card: bar and axis positions for the page's inline SVG."""

from __future__ import annotations

from typing import NamedTuple


def pct(value: float | None) -> str:
    """A share as the page writes it: ``60%``, or an en dash for none."""
    if value is None:
        return "–"
    return f"{value * 100:.0f}%"


# Chart geometry, in SVG user units; the SVG scales to the page width.
_CHART_W, _PLOT_X, _PLOT_RIGHT = 640, 40, 8
_PLOT_TOP, _PLOT_H, _VOLUME_GAP, _VOLUME_H, _AXIS_H = 16, 110, 6, 22, 16
_TICK_CLEARANCE = 14


class Bar(NamedTuple):
    """One day's bar and volume mark. A tuple rather than a dict: the template reads thousands of them a page, and
    jinja2 finds a tuple's attribute without first failing over to a key lookup."""

    x: float
    y: float
    w: float
    h: float
    kind: str
    label: str
    vy: float
    vh: float


def chart(user: dict, settings: dict) -> dict:
    """Bar positions for the daily negative ratio. Days with no messages get no bar (a gap); days with messages
    but no negative ones get a thin stub, so the two look different. A volume strip under the plot shows n."""
    daily = user["daily"]
    plot_w = _CHART_W - _PLOT_X - _PLOT_RIGHT
    slot = plot_w / max(len(daily), 1)
    bar_w = max(slot * 0.72, 1.0)
    max_n = max((day["n"] for day in daily), default=0) or 1
    volume_top = _PLOT_TOP + _PLOT_H + _VOLUME_GAP
    bars = []
    for i, day in enumerate(daily):
        x = _PLOT_X + i * slot + (slot - bar_w) / 2
        ratio = day["ratio"] if day["n"] else None
        volume_h = _VOLUME_H * day["n"] / max_n
        if ratio is None:
            height, kind = 0.0, "none"
        elif ratio <= 0:
            height, kind = 1.5, "zero"
        else:
            height = max(_PLOT_H * min(ratio, 1.0), 1.5)
            kind = "hi" if ratio >= settings["min_ratio"] else "lo"
        label = (
            f"{day['day']}: no messages"
            if ratio is None
            else f"{day['day']}: {day['neg']} of {day['n']} negative ({pct(ratio)})"
        )
        bars.append(Bar(x=round(x, 2), y=round(_PLOT_TOP + _PLOT_H - height, 2), w=round(bar_w, 2),
                        h=round(height, 2), kind=kind, label=label, vy=round(volume_top + _VOLUME_H - volume_h, 2),
                        vh=round(volume_h, 2)))
    window_days = min(settings["flag_window_days"], len(daily))
    axis_y = volume_top + _VOLUME_H + _AXIS_H - 4
    threshold_y = round(_PLOT_TOP + _PLOT_H * (1 - min(max(settings["min_ratio"], 0.0), 1.0)), 2)
    # The threshold gets its own red tick label; grey ticks too close to it would overprint it.
    ticks = [
        {"y": _PLOT_TOP + _PLOT_H * (1 - share), "label": pct(share)}
        for share in (1.0, 0.5, 0.0)
        if abs(_PLOT_TOP + _PLOT_H * (1 - share) - threshold_y) >= _TICK_CLEARANCE
    ]
    return {
        "width": _CHART_W,
        "height": volume_top + _VOLUME_H + _AXIS_H,
        "plot_x": _PLOT_X,
        "plot_right": _CHART_W - _PLOT_RIGHT,
        "plot_top": _PLOT_TOP,
        "plot_bottom": _PLOT_TOP + _PLOT_H,
        "mid_y": _PLOT_TOP + _PLOT_H / 2,
        "threshold_y": threshold_y,
        "ticks": ticks,
        "window_x": round(_PLOT_X + (len(daily) - window_days) * slot, 2),
        "window_w": round(window_days * slot, 2),
        "volume_top": volume_top,
        "volume_bottom": volume_top + _VOLUME_H,
        "max_n": max_n,
        "axis_y": axis_y,
        "first_day": daily[0]["day"] if daily else "",
        "last_day": daily[-1]["day"] if daily else "",
        "bars": bars,
    }
