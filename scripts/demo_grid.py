"""The demo's profile-comparison grid: one image per column, side by side, each with its label underneath and
a title band above (prompt and settings). Pillow only."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

MARGIN = 6
LINE_GAP = 2
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
MUTED = (90, 90, 90)


@dataclass(frozen=True)
class GridLayout:
    """Where the images sit in the grid: column i's image is the box (left(i), top, left(i) + width, top + height)."""

    columns: int
    width: int
    height: int
    top: int

    def left(self, column: int) -> int:
        return MARGIN + column * (self.width + MARGIN)

    def box(self, column: int) -> tuple[int, int, int, int]:
        return self.left(column), self.top, self.left(column) + self.width, self.top + self.height


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font (needs FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """Greedy word wrap to a pixel width (a word longer than the width gets a line of its own)."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}".strip()
            if line and draw.textlength(candidate, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def _line_height(font) -> int:
    _, top, _, bottom = font.getbbox("Ag")
    return bottom - top + LINE_GAP


def make_grid(images: list[Path], labels: list[str], title: str, path: Path,
              details: list[str] | None = None, font_size: int = 12) -> GridLayout:
    """Write the grid PNG to `path`: `images` (all one size) in a row, `labels[i]` (dark) and `details[i]`
    (muted lines) under image i, `title` above. Returns where the images are."""
    if not images or len(images) != len(labels):
        raise ValueError(f"{len(images)} images and {len(labels)} labels: need one label per image, at least one")
    details = details or [""] * len(images)
    opened = [Image.open(image).convert("RGB") for image in images]
    sizes = {image.size for image in opened}
    if len(sizes) != 1:
        raise ValueError(f"the images differ in size: {sorted(sizes)}")
    width, height = opened[0].size
    font, small = _font(font_size), _font(max(8, font_size - 2))
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    total_width = MARGIN + len(opened) * (width + MARGIN)
    title_lines = _wrap(scratch, title, small, total_width - 2 * MARGIN)
    label_lines = [_wrap(scratch, label, font, width) for label in labels]
    detail_lines = [_wrap(scratch, detail, small, width) if detail else [] for detail in details]
    top = MARGIN + len(title_lines) * _line_height(small) + MARGIN
    text_height = max(len(a) * _line_height(font) + len(b) * _line_height(small)
                      for a, b in zip(label_lines, detail_lines))
    layout = GridLayout(len(opened), width, height, top)
    grid = Image.new("RGB", (total_width, top + height + MARGIN + text_height + MARGIN), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    y = MARGIN
    for line in title_lines:
        draw.text((MARGIN, y), line, fill=MUTED, font=small)
        y += _line_height(small)
    for column, image in enumerate(opened):
        grid.paste(image, layout.box(column)[:2])
        y = top + height + MARGIN
        for line in label_lines[column]:
            draw.text((layout.left(column), y), line, fill=TEXT, font=font)
            y += _line_height(font)
        for line in detail_lines[column]:
            draw.text((layout.left(column), y), line, fill=MUTED, font=small)
            y += _line_height(small)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, optimize=True)
    return layout
