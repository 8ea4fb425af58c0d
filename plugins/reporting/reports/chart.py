"""The report's bar chart of uploads per day, drawn with Pillow as a PNG."""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 1400, 560  # drawn at twice the printed size, for a sharp print
BAR = (37, 99, 235)
AXIS = (90, 90, 90)
TEXT = (30, 30, 30)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError):  # a Pillow built without FreeType
        return ImageFont.load_default()


def bar_chart(labels: Sequence[str], values: Sequence[int]) -> bytes:
    """A PNG bar chart, one bar per label, each with its value written above it."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = _font(26)
    left, right, top, bottom = 40, WIDTH - 40, 50, HEIGHT - 70
    draw.line([(left, bottom), (right, bottom)], fill=AXIS, width=3)
    highest = max(values, default=0) or 1
    slot = (right - left) / max(len(values), 1)
    for index, (label, value) in enumerate(zip(labels, values, strict=True)):
        x0 = left + index * slot + slot * 0.18
        x1 = left + (index + 1) * slot - slot * 0.18
        y0 = bottom - (bottom - top) * value / highest
        if value:
            draw.rectangle([(x0, y0), (x1, bottom)], fill=BAR)
        centre = (x0 + x1) / 2
        draw.text((centre, y0 - 8), f"{value:,}", fill=TEXT, font=font, anchor="md")
        draw.text((centre, bottom + 14), label, fill=TEXT, font=font, anchor="ma")
    out = io.BytesIO()
    image.save(out, "PNG", optimize=True)
    return out.getvalue()
