"""The show's artwork, drawn from its title: a 3000 × 3000 px PNG, as Apple recommends.

    png = cover_art("Talk Fast Python")     # bytes; the same for the same title and Pillow

Podcast apps show the artwork from the feed's ``itunes:image`` (Apple: square,
1400 to 3000 px, JPEG or PNG in RGB, and the title legible); directories
reject a show without it. Drawing it from ``SITE_TITLE`` keeps it in step with
the show's name without a designer's file in the repository, and the
freezer writes it into the build like any page (``/artwork.png``).

Flat colours and bars compress to about 100 kB as PNG, far under the 512 kB
a podcast app downloads comfortably.
"""

from __future__ import annotations

import functools
import io
import random

from PIL import Image, ImageDraw, ImageFont

SIZE = 3000
MARGIN = 240
BACKGROUND = "#0f1b2d"
TEXT = "#ffffff"
ACCENT = "#f5b041"
BARS = "#2e86c1"
#: The title starts at this many pixels high, and shrinks until it fits in MAX_LINES.
TITLE_SIZE = 420
MIN_TITLE_SIZE = 120
MAX_LINES = 4

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@functools.lru_cache(maxsize=4)
def cover_art(title: str) -> bytes:
    """The artwork for a show called ``title``, as PNG bytes (about a third of a second to draw)."""
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    _level_meter(draw, random.Random(title))
    size, font, lines = _fit(draw, title)
    y = MARGIN + 60
    for line in lines:
        draw.text((MARGIN, y), line, font=font, fill=TEXT)
        y += size * 112 // 100
    draw.text((MARGIN, y + 40), "A PODCAST", font=ImageFont.load_default(size=120), fill=ACCENT)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def _level_meter(draw: ImageDraw.ImageDraw, rng: random.Random) -> None:
    """Rounded bars along the bottom, like a sound level meter; every fifth in the accent colour."""
    x, baseline = MARGIN, SIZE - 300
    for bar in range(24):
        height = rng.randint(120, 900)
        colour = ACCENT if bar % 5 == 0 else BARS
        draw.rounded_rectangle([x, baseline - height, x + 70, baseline], radius=35, fill=colour)
        x += 106


def _fit(draw: ImageDraw.ImageDraw, title: str) -> tuple[int, Font, list[str]]:
    """The largest font (Pillow's own: no system font needed) fitting ``title`` in MAX_LINES."""
    width = SIZE - 2 * MARGIN
    size = TITLE_SIZE
    while True:
        font = ImageFont.load_default(size=size)
        lines = _wrap(draw, title.split() or [title], font, width)
        fits = all(draw.textlength(line, font=font) <= width for line in lines)
        if (fits and len(lines) <= MAX_LINES) or size <= MIN_TITLE_SIZE:
            return size, font, lines[:MAX_LINES]
        size = size * 9 // 10


def _wrap(draw: ImageDraw.ImageDraw, words: list[str], font: Font, width: int) -> list[str]:
    lines: list[str] = []
    for word in words:
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines
