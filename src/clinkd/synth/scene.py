"""One synthetic image: lay out 2–3 structures and usually one lesion, paint them, describe them.

Layout rules (they keep every box unambiguous):

* every object's bounding box lies inside the modality's ``region``;
* structures' pixel boxes are pairwise at least ``2·s`` pixels apart;
* a lesion's box is either that far from every structure box, or lies inside the mask of a structure
  that ``hosts`` its class, with box IoU < 0.3 (a nodule in a lung, a stone in the gallbladder).

Placement is exact rather than trial and error: for a drawn shape, the top-left corner of its box is
chosen uniformly among *all* corners where the box is allowed (summed-area tables make that one
vectorised pass). The classes of an image are drawn first and never redrawn, so class frequencies, the
number of structures (2, or uniformly 2–3 where a modality has 3 classes) and the lesion rate
(:data:`LESION_RATE`) hold exactly; only sizes and shapes are redrawn when a layout does not fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from clinkd.boxes import Box
from clinkd.synth.draw import Blob, BlobRaster, MaskCounter, band_below, paint, smooth_noise
from clinkd.synth.modalities import (
    MODALITY_SPECS,
    SIZES,
    Canvas,
    ClassSpec,
    Kind,
    ModalitySpec,
    ShapeWord,
    SizeWord,
)

LESION_RATE = 0.85
# Longest side / image side, sampled per size word; the gaps keep the measured word unambiguous.
EXTENT_RANGES: dict[SizeWord, tuple[float, float]] = {
    "small": (0.12, 0.18),
    "medium": (0.22, 0.29),
    "large": (0.34, 0.42),
}
# Measured longest side / image side below which an object is "small", resp. "medium".
SMALL_BELOW, MEDIUM_BELOW = 0.2, 0.315
LOCATIONS: tuple[tuple[str, ...], ...] = (
    ("upper left", "top", "upper right"),
    ("left", "central", "right"),
    ("lower left", "bottom", "lower right"),
)
HOSTED_MAX_IOU = 0.3
HOSTED_SHARE = 0.5
TRIES_PER_OBJECT = 4  # shapes drawn per object before the layout is redrawn
MAX_LAYOUTS = 100


@dataclass(frozen=True)
class SceneObject:
    """A drawn object and the attributes every answer is built from (box, size and location measured
    from its mask; intensity and shape as drawn)."""

    name: str
    kind: Kind
    box: Box  # integer corners on the 0–1000 scale
    pixel_box: tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels, exclusive ends
    size: SizeWord
    shape: ShapeWord
    intensity: str
    location: str
    area: int  # pixels
    inside: str | None = None  # the structure a hosted lesion lies in

    def to_json(self) -> dict:
        box = self.box
        return {
            "name": self.name,
            "kind": self.kind,
            "box": [int(box.x1), int(box.y1), int(box.x2), int(box.y2)],
            "pixel_box": list(self.pixel_box),
            "size": self.size,
            "shape": self.shape,
            "intensity": self.intensity,
            "location": self.location,
            "area_px": self.area,
            "inside": self.inside,
        }


@dataclass(frozen=True)
class Scene:
    """A rendered image (``uint8`` RGB) and its objects: structures in class order, then the lesion."""

    modality: str
    pixels: np.ndarray
    objects: tuple[SceneObject, ...]

    @property
    def structures(self) -> tuple[SceneObject, ...]:
        return tuple(obj for obj in self.objects if obj.kind == "structure")

    @property
    def lesion(self) -> SceneObject | None:
        return next((obj for obj in self.objects if obj.kind == "lesion"), None)


@dataclass(frozen=True)
class _Placed:
    spec: ClassSpec
    blob: Blob
    shape: ShapeWord
    raster: BlobRaster
    host: str | None = None


def size_word(pixel_box: tuple[int, int, int, int], image_size: int) -> SizeWord:
    """``small`` / ``medium`` / ``large`` from the longest box side over the image side."""
    x1, y1, x2, y2 = pixel_box
    extent = max(x2 - x1, y2 - y1) / image_size
    if extent < SMALL_BELOW:
        return "small"
    return "medium" if extent < MEDIUM_BELOW else "large"


def location_word(box: Box) -> str:
    """The cell of the 3×3 grid that holds the box centre (``upper left`` … ``lower right``)."""
    column = min(2, int(3 * (box.x1 + box.x2) / 2 / 1000))
    row = min(2, int(3 * (box.y1 + box.y2) / 2 / 1000))
    return LOCATIONS[row][column]


def _pixel_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int], image_size: int) -> float:
    """IoU of two pixel boxes (scale-free, so computed on the 0–1000 scale)."""
    return Box.from_pixels(*a, image_size, image_size).iou(Box.from_pixels(*b, image_size, image_size))


def _sample_shape(spec: ClassSpec, word: SizeWord, rng: np.random.Generator, size: int) -> tuple[Blob, ShapeWord]:
    """A blob of ``spec`` with size ``word``, centred at the origin, and its shape word.

    Longest side ``e`` is uniform in the size word's :data:`EXTENT_RANGES` (× ``size``); round:
    ``a = b = e/2``; oval: ``a = e/2``, ``b = a / ratio``; irregular: harmonics k = 2, 3, 5 with
    amplitudes U(0.06, 0.12), ``a = e / (2·(1 + ½ΣA))``, ``b = a·U(0.75, 1)``. Angle uniform.
    """
    shape: ShapeWord = spec.shapes[int(rng.integers(len(spec.shapes)))]
    extent = rng.uniform(*EXTENT_RANGES[word]) * size
    angle = rng.uniform(0, math.pi)
    harmonics: tuple[tuple[int, float, float], ...] = ()
    if shape == "round":
        a = b = extent / 2
    elif shape == "oval":
        a = extent / 2
        b = a / rng.uniform(*spec.elongation)
    else:
        harmonics = tuple((k, rng.uniform(0.06, 0.12), rng.uniform(0, 2 * math.pi)) for k in (2, 3, 5))
        a = extent / (2 * (1 + 0.5 * sum(amplitude for _, amplitude, _ in harmonics)))
        b = a * rng.uniform(0.75, 1.0)
    return Blob(0.0, 0.0, a, b, angle, harmonics), shape


def _blocked_by_boxes(region: np.ndarray, boxes: list[tuple[int, int, int, int]], gap: int) -> np.ndarray:
    """Pixels outside ``region`` or within ``gap`` of one of ``boxes``."""
    blocked = ~region
    for x1, y1, x2, y2 in boxes:
        blocked[max(0, y1 - gap) : y2 + gap, max(0, x1 - gap) : x2 + gap] = True
    return blocked


def _position(
    spec: ClassSpec, word: SizeWord, rng: np.random.Generator, size: int, areas: list[tuple[MaskCounter, int | None]]
) -> tuple[_Placed | None, int | None]:
    """Draw a shape and put its box's top-left corner uniformly among the corners where some area is free.

    ``areas`` pairs a counter of *blocked* pixels with a tag (``None``, or a host's index); the tag of
    the first area free at the chosen corner is returned. With ``l``, ``r`` the blob's :meth:`Blob.reach`
    to the left and right, the box of width ``W = ⌈l + r⌉ + 1`` at corner ``x`` contains the blob
    centred at ``x + l + U(0, 1)`` (likewise vertically).
    ``spec.side`` keeps the box centre in the named image half. Returns ``(None, None)`` when nothing fits.
    """
    blob, shape = _sample_shape(spec, word, rng, size)
    left, up, right, down = blob.reach()
    width, height = math.ceil(left + right) + 1, math.ceil(up + down) + 1
    if width > size or height > size:
        return None, None
    free = [counter.free_corners(width, height) for counter, _ in areas]
    allowed = np.logical_or.reduce(free)
    if spec.side is not None:
        centre_x = np.arange(allowed.shape[1]) + left  # the blob centre lies in [centre_x, centre_x + 1)
        allowed &= (centre_x + 1 <= size / 2) if spec.side == "left" else (centre_x >= size / 2)
    rows, cols = np.nonzero(allowed)
    if rows.size == 0:
        return None, None
    pick = int(rng.integers(rows.size))
    x, y = int(cols[pick]), int(rows[pick])
    tag = next(tag for (_, tag), ok in zip(areas, free) if ok[y, x])
    positioned = replace(blob, cx=x + left + rng.uniform(0, 1), cy=y + up + rng.uniform(0, 1))
    raster = positioned.raster(size)
    return (None, None) if raster is None else (_Placed(spec, positioned, shape, raster), tag)


def _place_structure(
    spec: ClassSpec, word: SizeWord, placed: list[_Placed], region: np.ndarray, rng: np.random.Generator, gap: int
) -> _Placed | None:
    """A structure in ``region``, its box ``gap`` pixels from every placed box."""
    blocked = MaskCounter(_blocked_by_boxes(region, [item.raster.pixel_box for item in placed], gap))
    for _ in range(TRIES_PER_OBJECT):
        found, _ = _position(spec, word, rng, region.shape[0], [(blocked, None)])
        if found is not None:
            return found
    return None


def _place_lesion(
    spec: ClassSpec, word: SizeWord, structures: list[_Placed], region: np.ndarray, rng: np.random.Generator, gap: int
) -> _Placed | None:
    """A lesion in ``region``, either ``gap`` from every structure box or inside a structure hosting it.

    When a structure can host the lesion, each try first looks inside the hosts with probability
    :data:`HOSTED_SHARE` (else first outside them) and falls back to the other side.
    """
    size = region.shape[0]
    apart = [(MaskCounter(_blocked_by_boxes(region, [item.raster.pixel_box for item in structures], gap)), None)]
    hosted: list[tuple[MaskCounter, int | None]] = [
        (MaskCounter(~host.raster.full_mask(size)), index)
        for index, host in enumerate(structures)
        if spec.name in host.spec.hosts
    ]
    for _ in range(TRIES_PER_OBJECT):
        inside_first = bool(hosted) and rng.random() < HOSTED_SHARE
        for areas in (hosted, apart) if inside_first else (apart, hosted):
            found, tag = _position(spec, word, rng, size, areas) if areas else (None, None)
            if found is None:
                continue
            if tag is None:
                return found
            host = structures[tag]
            if _pixel_iou(found.raster.pixel_box, host.raster.pixel_box, size) < HOSTED_MAX_IOU:
                return replace(found, host=host.spec.name)
    return None


def _layout(spec: ModalitySpec, canvas: Canvas, rng: np.random.Generator) -> list[_Placed]:
    """Structures (2, or 2–3 when the modality has 3+) and, with probability :data:`LESION_RATE`, a lesion.

    The classes are drawn once; each attempt draws every object's size word and places the structures
    largest first, then the lesion. Structures are returned in the modality's class order.
    """
    region = canvas.region
    gap = math.ceil(2 * region.shape[0] / 112)
    count = int(rng.integers(2, min(3, len(spec.structures)) + 1))
    chosen = [spec.structures[i] for i in sorted(rng.choice(len(spec.structures), size=count, replace=False))]
    lesion = spec.lesions[int(rng.integers(len(spec.lesions)))] if rng.random() < LESION_RATE else None
    for _ in range(MAX_LAYOUTS):
        words = [cls.sizes[int(rng.integers(len(cls.sizes)))] for cls in chosen]
        placed: list[_Placed] = []
        for order in sorted(range(count), key=lambda i: -SIZES.index(words[i])):
            found = _place_structure(chosen[order], words[order], placed, region, rng, gap)
            if found is None:
                break
            placed.append(found)
        else:
            placed.sort(key=lambda item: chosen.index(item.spec))
            if lesion is None:
                return placed
            word = lesion.sizes[int(rng.integers(len(lesion.sizes)))]
            found = _place_lesion(lesion, word, placed, region, rng, gap)
            if found is not None:
                return [*placed, found]
    names = ", ".join(cls.name for cls in (*chosen, *([lesion] if lesion else [])))
    raise RuntimeError(f"modality {spec.key}: no layout of {names} found in {MAX_LAYOUTS} attempts")


def _describe(item: _Placed, image_size: int) -> SceneObject:
    box = Box.from_pixels(*item.raster.pixel_box, image_size, image_size).rounded()
    return SceneObject(
        name=item.spec.name,
        kind=item.spec.kind,
        box=box,
        pixel_box=item.raster.pixel_box,
        size=size_word(item.raster.pixel_box, image_size),
        shape=item.shape,
        intensity=item.spec.intensity,
        location=location_word(box),
        area=item.raster.area,
        inside=item.host,
    )


def render_scene(modality: str, rng: np.random.Generator, image_size: int) -> Scene:
    """Draw one image of ``modality``: background, layout, underlay, objects, shadows, finish, noise.

    The last step is ``clip(gain·image + ε, 0, 1)`` with ``gain ~ U(0.94, 1.06)`` and
    ``ε ~ N(0, 0.015²)`` per pixel (the same on the three channels), rounded to ``uint8`` ``(S, S, 3)``.
    """
    spec = MODALITY_SPECS[modality]
    canvas = spec.background(rng, image_size)
    placed = _layout(spec, canvas, rng)
    spec.underlay(canvas, {item.spec.name: (item.blob.cx, item.blob.cy) for item in placed}, rng)
    texture = smooth_noise(rng, image_size, max(4, image_size // 10))
    for item in placed:
        paint(canvas.image, item.raster, item.spec.look, texture)
    for item in placed:
        factor = item.spec.look.below
        if factor is not None:
            x1, y1, x2, y2 = item.raster.pixel_box
            mask = item.raster.full_mask(image_size)
            band = band_below(mask, round(1.2 * (y2 - y1))) & canvas.field & ~mask
            canvas.image *= np.where(band, np.float32(factor), np.float32(1))[None]
    spec.finish(canvas, rng)
    grain = rng.standard_normal((image_size, image_size), dtype=np.float32) * np.float32(0.015)
    image = canvas.image * np.float32(rng.uniform(0.94, 1.06)) + grain
    planar = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)  # round half up; values are >= 0
    pixels = np.ascontiguousarray(planar.transpose(1, 2, 0))
    return Scene(modality, pixels, tuple(_describe(item, image_size) for item in placed))
