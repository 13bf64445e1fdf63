"""Text that fits the region it is drawn in: messages wrapped to the sidebar's real width at
word boundaries, long words (paths) shortened in the middle.

The wrapping itself is plain Python (`wrap`, `elide_middle`, given a function that measures a
string in pixels); `fit_width`/`measure_for` read the region and the UI scale and measure with
Blender's UI font (blf), falling back to an estimate where no font is loaded.
"""
from __future__ import annotations

from typing import Callable, Optional

Measure = Callable[[str], float]
ELLIPSIS = "\u2026"
CHAR_PX = 6.5            # estimate of an average UI character at scale 1 (11 pt), when blf cannot say
# Pixels of a sidebar region that text cannot use, at scale 1: the panel's margins, a box's
# padding and the tab strip (measured on Blender 4.3's sidebar at its default width).
SIDEBAR_MARGIN_PX = 72.0
FALLBACK_WIDTH_PX = 240.0     # no region (background mode, tests): about the default sidebar


def estimate(scale: float = 1.0) -> Measure:
    return lambda s: len(s) * CHAR_PX * scale


def elide_middle(text: str, width: float, measure: Measure) -> str:
    """`text`, or its start and end around an ellipsis, whichever fits `width` pixels."""
    if measure(text) <= width:
        return text
    keep = len(text)
    while keep > 2:
        keep -= 1
        head = (keep + 1) // 2
        tail = keep - head
        short = text[:head] + ELLIPSIS + (text[-tail:] if tail else "")
        if measure(short) <= width:
            return short
    return text[:1] + ELLIPSIS


def wrap(text: str, width: float, measure: Measure) -> list[str]:
    """Lines of at most `width` pixels, broken between words; a word longer than a line (a path)
    gets a line of its own, shortened in the middle. Line breaks in `text` are kept."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            if measure(word) > width:
                if line:
                    lines.append(line)
                lines.append(elide_middle(word, width, measure))
                line = ""
            elif line and measure(f"{line} {word}") > width:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    return lines


# --- Blender ------------------------------------------------------------------------------------

def ui_scale(context) -> float:
    scale = float(getattr(context.preferences.system, "ui_scale", 1.0) or 0.0)
    return scale if scale > 0 else 1.0       # 0 in background mode


def measure_for(context) -> Measure:
    """Width in pixels of a string in the UI's font at the UI's scale."""
    scale = ui_scale(context)
    try:
        import blf
        points = context.preferences.ui_styles[0].widget.points
        size = points * scale
        blf.size(0, size)
        if blf.dimensions(0, "abc")[0] <= 0:
            raise RuntimeError("no font")
    except Exception:          # no font, no blf, no style: estimate
        return estimate(scale)

    def measure(s: str) -> float:
        blf.size(0, size)
        return blf.dimensions(0, s)[0]
    return measure


def fit_width(context, margin_px: float = SIDEBAR_MARGIN_PX) -> float:
    """Pixels available to a label in the region being drawn."""
    region = getattr(context, "region", None)
    scale = ui_scale(context)
    width = float(region.width) if region is not None and region.width > 1 else FALLBACK_WIDTH_PX * scale
    return max(width - margin_px * scale, 60.0 * scale)


def draw_wrapped(layout, context, text: str, alert: bool = False, icon: Optional[str] = None,
                 margin_px: float = SIDEBAR_MARGIN_PX, share: float = 1.0) -> None:
    """`text` as labels wrapped to the region's width, or to `share` of it (a column of a split;
    the first line with `icon`)."""
    col = layout.column(align=True)
    col.alert = alert
    measure = measure_for(context)
    width = fit_width(context, margin_px) * share
    icon_px = 20.0 * ui_scale(context) if icon else 0.0
    for i, line in enumerate(wrap(text, width - icon_px, measure)):
        if icon and i == 0:
            col.label(text=line, icon=icon)
        else:
            col.label(text=line, icon="BLANK1" if icon else "NONE")


def short_path(context, path: str, share: float = 1.0, margin_px: float = SIDEBAR_MARGIN_PX) -> str:
    """A path shortened in the middle to fit `share` of the region's width."""
    return elide_middle(path, fit_width(context, margin_px) * share, measure_for(context))
