"""A montage of one image per modality from a generated dataset, raw and with its boxes drawn."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from clinkd.boxes import Box
from clinkd.data.records import MODALITIES, MODALITY_NAMES
from clinkd.io import read_jsonl

_STRUCTURE_COLOUR = (0, 220, 255)
_LESION_COLOUR = (255, 230, 0)
_CAPTION_HEIGHT = 18
_COLUMNS = 4


def render_montage(dataset_dir: str | Path, out_png: str | Path, split: str = "train", scale: int = 2) -> Path:
    """Write a 4×2 grid to ``out_png``: per modality the first ``split`` image, as is and annotated.

    Each cell holds the image upscaled ``scale``× (nearest neighbour, so the pixels stay visible) and a
    copy with every object's box and name (structures cyan, the lesion yellow), under a caption.
    Reads ``objects.jsonl`` and ``images/`` of ``dataset_dir``; raises ``FileNotFoundError`` naming
    the first missing file and ``ValueError`` when a modality has no ``split`` image.
    """
    dataset_dir = Path(dataset_dir)
    first: dict[str, dict] = {}
    for row in read_jsonl(dataset_dir / "objects.jsonl"):
        if row["split"] == split:
            first.setdefault(row["modality"], row)
    missing = [modality for modality in MODALITIES if modality not in first]
    if missing:
        raise ValueError(f"{dataset_dir / 'objects.jsonl'} has no {split} image for {', '.join(missing)}")
    font = ImageFont.load_default()
    cells = [_cell(dataset_dir, first[modality], scale, font) for modality in MODALITIES]
    width, height = cells[0].size
    rows = -(-len(cells) // _COLUMNS)
    sheet = Image.new("RGB", (width * _COLUMNS, height * rows), (255, 255, 255))
    for number, cell in enumerate(cells):
        sheet.paste(cell, ((number % _COLUMNS) * width, (number // _COLUMNS) * height))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png, format="PNG")
    return out_png


def _cell(dataset_dir: Path, row: dict, scale: int, font: ImageFont.ImageFont) -> Image.Image:
    """The raw and annotated image side by side, with the modality and id as caption."""
    path = dataset_dir / "images" / f"{row['id']}.png"
    if not path.is_file():
        raise FileNotFoundError(f"montage: image {path} listed in objects.jsonl does not exist")
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    side = image.width * scale
    raw = image.resize((side, side), Image.Resampling.NEAREST)
    annotated = raw.copy()
    pen = ImageDraw.Draw(annotated)
    for obj in row["objects"]:
        colour = _LESION_COLOUR if obj["kind"] == "lesion" else _STRUCTURE_COLOUR
        x1, y1, x2, y2 = Box(*obj["box"]).to_pixels(side, side)
        pen.rectangle((x1, y1, x2 - 1, y2 - 1), outline=colour, width=1)
        pen.text((x1 + 2, y1 + 1), obj["name"], fill=colour, font=font)
    cell = Image.new("RGB", (2 * side + 4, side + _CAPTION_HEIGHT), (255, 255, 255))
    cell.paste(raw, (0, _CAPTION_HEIGHT))
    cell.paste(annotated, (side + 4, _CAPTION_HEIGHT))
    ImageDraw.Draw(cell).text((2, 3), f"{MODALITY_NAMES[row['modality']]}  {row['id']}", fill=(0, 0, 0), font=font)
    return cell
