"""The 8 synthetic modalities: how each background looks, and its named structures and lesion types.

Every modality has a background painter (its recognisable look and the ``region`` where objects may be
placed), optional hooks that draw anatomy tied to the objects (fundus vessels from the optic disc) or over
everything (X-ray ribs, dermoscopy hairs, ultrasound speckle), 2–3 structure classes and 3 lesion classes.
Within a modality every class has its own :class:`~clinkd.synth.draw.Look` (grey level or colour plus
texture), so the class of an object can be read from its pixels.

All lengths scale with the image size ``S``; ``s = S / 112`` is the pixel scale of the 112-px design.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from clinkd.data.records import MODALITIES
from clinkd.synth.draw import (
    RGB,
    Look,
    blend,
    curves_mask,
    ellipse_mask,
    pixel_centres,
    planes,
    radial_distance,
    smooth_noise,
)

Kind = Literal["structure", "lesion"]
SizeWord = Literal["small", "medium", "large"]
ShapeWord = Literal["round", "oval", "irregular"]
SIZES: tuple[SizeWord, ...] = ("small", "medium", "large")
SHAPES: tuple[ShapeWord, ...] = ("round", "oval", "irregular")


@dataclass(frozen=True)
class ClassSpec:
    """One object class of a modality.

    ``intensity`` is the word the captions use for ``look``; ``shapes``/``sizes`` are the shape and size
    words it may be drawn with; ``side`` keeps its centre in one image half (X-ray lungs); ``hosts``
    names the lesion classes that may lie inside it (drawn over it, with enough contrast to see).
    """

    name: str
    kind: Kind
    look: Look
    intensity: str
    shapes: tuple[ShapeWord, ...] = SHAPES
    sizes: tuple[SizeWord, ...] = SIZES
    elongation: tuple[float, float] = (1.45, 2.0)  # major/minor axis ratio range of "oval"
    side: Literal["left", "right"] | None = None
    hosts: tuple[str, ...] = ()


@dataclass
class Canvas:
    """An image being drawn: pixels, where objects may go, and the anatomy's extent (``field``)."""

    image: np.ndarray
    region: np.ndarray
    field: np.ndarray


Background = Callable[[np.random.Generator, int], Canvas]
Underlay = Callable[[Canvas, Mapping[str, tuple[float, float]], np.random.Generator], None]
Finish = Callable[[Canvas, np.random.Generator], None]


def _no_underlay(canvas: Canvas, centres: Mapping[str, tuple[float, float]], rng: np.random.Generator) -> None:
    """Nothing tied to the objects' positions."""


def _no_finish(canvas: Canvas, rng: np.random.Generator) -> None:
    """No overlay."""


@dataclass(frozen=True)
class ModalitySpec:
    """A modality: MIA lead phrase, classes and painters (``underlay`` runs after layout, before objects)."""

    key: str
    lead: str
    structures: tuple[ClassSpec, ...]
    lesions: tuple[ClassSpec, ...]
    background: Background
    underlay: Underlay = _no_underlay
    finish: Finish = _no_finish
    classes: dict[str, ClassSpec] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        classes = {spec.name: spec for spec in (*self.structures, *self.lesions)}
        if len(classes) != len(self.structures) + len(self.lesions):
            raise ValueError(f"modality {self.key}: class names must be unique")
        object.__setattr__(self, "classes", classes)


def grey(value: float) -> RGB:
    return (value, value, value)


def hot_map(values: np.ndarray) -> np.ndarray:
    """The 'hot' colour map as planes ``(3, *values.shape)``: ``(clip(3v), clip(3v-1), clip(3v-2))``,
    black → red → yellow → white as ``v`` goes 0 → 1."""
    return np.stack([np.clip(3 * values - offset, 0, 1) for offset in (0, 1, 2)]).astype(np.float32)


def hot(value: float) -> RGB:
    """The 'hot' colour of one value."""
    red, green, blue = (float(channel) for channel in hot_map(np.asarray(value)))
    return (red, green, blue)


def _grey_field(values: np.ndarray) -> np.ndarray:
    """A grey ``(S, S)`` field as a ``(1, S, S)`` array that broadcasts over the three planes."""
    return values.astype(np.float32)[None]


def _tinted(colour: RGB, gain: np.ndarray) -> np.ndarray:
    """``colour`` scaled per pixel by ``gain`` (shading and texture of a coloured background)."""
    return planes(colour) * gain.astype(np.float32)[None]


def _filled(size: int, value: float = 0.0) -> np.ndarray:
    return np.full((3, size, size), value, dtype=np.float32)


# ---- backgrounds ---------------------------------------------------------------------------------


def _ct_background(rng: np.random.Generator, size: int) -> Canvas:
    """Axial abdomen: grey body ellipse (wider than tall) on black, bright skin rim, vertebra at the back."""
    s = size / 112
    cx, cy = size / 2 + rng.uniform(-2, 2) * s, size / 2 + rng.uniform(-2, 2) * s
    rx, ry = size * rng.uniform(0.46, 0.48), size * rng.uniform(0.39, 0.42)
    image = _filled(size, 0.02)
    body = ellipse_mask(size, cx, cy, rx, ry)
    blend(image, body, grey(0.55))
    inner = ellipse_mask(size, cx, cy, rx - 3 * s, ry - 3 * s)
    blend(image, inner, _grey_field(0.30 + 0.025 * smooth_noise(rng, size, 14)))
    vx, vy, vr = cx, cy + ry - 13 * s, 7 * s
    vertebra = radial_distance(size, vx, vy, vr)
    blend(image, vertebra <= 1, grey(0.95))
    blend(image, vertebra <= 0.55, grey(0.55))
    region = ellipse_mask(size, cx, cy, rx - 6 * s, ry - 6 * s) & (radial_distance(size, vx, vy, vr + 5 * s) > 1)
    return Canvas(image, region, body)


def _mr_background(rng: np.random.Generator, size: int) -> Canvas:
    """Axial brain (T1-like): taller-than-wide head, bright scalp, dark skull, grey textured brain."""
    s = size / 112
    cx, cy = size / 2 + rng.uniform(-2, 2) * s, size / 2 + rng.uniform(-2, 2) * s
    rx, ry = size * rng.uniform(0.38, 0.41), size * rng.uniform(0.45, 0.47)
    image = _filled(size, 0.03)
    head = ellipse_mask(size, cx, cy, rx, ry)
    blend(image, head, grey(0.85))
    blend(image, ellipse_mask(size, cx, cy, rx - 3 * s, ry - 3 * s), grey(0.12))
    brain = ellipse_mask(size, cx, cy, rx - 6 * s, ry - 6 * s)
    blend(image, brain, _grey_field(0.50 + 0.05 * smooth_noise(rng, size, 18)))
    region = ellipse_mask(size, cx, cy, rx - 9 * s, ry - 9 * s)
    return Canvas(image, region, head)


def _xray_background(rng: np.random.Generator, size: int) -> Canvas:
    """Frontal chest: soft tissue brightening downwards and at the sides, bright spine down the middle."""
    s = size / 112
    xs, ys = pixel_centres(size)
    cx = size / 2 + rng.uniform(-2, 2) * s
    lateral = ((xs - cx) / (size / 2)) ** 4
    spine = np.exp(-(((xs - cx) / (0.06 * size)) ** 2))
    values = 0.34 + 0.16 * ys / size + 0.12 * lateral + 0.22 * spine + 0.02 * smooth_noise(rng, size, 10)
    margin = 4 * s
    region = (xs > margin) & (xs < size - margin) & (ys > margin) & (ys < size - margin)
    image = np.repeat(_grey_field(values), 3, axis=0)
    return Canvas(image, region, np.ones((size, size), dtype=bool))


def _xray_ribs(canvas: Canvas, rng: np.random.Generator) -> None:
    """Seven pairs of bright rib arcs over everything, higher in the middle, split at the spine."""
    size = canvas.image.shape[1]
    s = size / 112
    cx = size / 2
    ribs = []
    for k in range(7):
        y0 = size * (0.10 + 0.125 * k) + rng.uniform(-2, 2) * s
        for start, stop in ((2.0, cx - 7 * s), (cx + 7 * s, size - 2.0)):
            ribs.append([
                (x, y0 - 0.08 * size * (1 - ((x - cx) / (size / 2)) ** 2))
                for x in np.linspace(start, stop, 12)
            ])
    blend(canvas.image, curves_mask(size, ribs, 2.5 * s), grey(1.0), 0.16)


def _pet_background(rng: np.random.Generator, size: int) -> Canvas:
    """Coronal whole-body PET: dim red torso silhouette in the hot colour map on black."""
    s = size / 112
    cx, cy = size / 2 + rng.uniform(-2, 2) * s, size * 0.52
    rx, ry = size * rng.uniform(0.39, 0.42), size * rng.uniform(0.44, 0.47)
    image = _filled(size)
    body = ellipse_mask(size, cx, cy, rx, ry)
    uptake = np.clip(0.12 + 0.03 * smooth_noise(rng, size, 12), 0, 1)
    blend(image, body, hot_map(uptake))
    region = ellipse_mask(size, cx, cy, rx - 5 * s, ry - 5 * s)
    return Canvas(image, region, body)


def _round_field(
    rng: np.random.Generator,
    size: int,
    colour: tuple[float, float, float],
    falloff: float,
    noise: float,
    noise_scale: int,
) -> tuple[np.ndarray, np.ndarray, float]:
    """A tinted disc of radius 0.46–0.48 × size on black, darker by ``falloff``·r² towards its rim, with smooth
    noise (the endoscope's and the fundus camera's field); returns the image, the relative radius map and the radius."""
    radius = size * rng.uniform(0.46, 0.48)
    r = radial_distance(size, size / 2, size / 2, radius)
    image = _filled(size)
    gain = (1 - falloff * r**2) * (1 + noise * smooth_noise(rng, size, noise_scale))
    blend(image, r <= 1, _tinted(colour, gain))
    return image, r, radius


def _endoscopy_background(rng: np.random.Generator, size: int) -> Canvas:
    """Pink-red mucosa in a circular field with a dark vignette and faint red vessels."""
    s = size / 112
    image, r, radius = _round_field(rng, size, (0.82, 0.42, 0.40), falloff=0.35, noise=0.06, noise_scale=20)
    fieldmask = r <= 1
    vessels = [
        _wander(rng, rng.uniform(0.2, 0.8, 2) * size, rng.uniform(0, 2 * math.pi), steps=10, step=4 * s, turn=0.5)
        for _ in range(int(rng.integers(3, 6)))
    ]
    blend(image, curves_mask(size, vessels, 1) & fieldmask, (0.6, 0.18, 0.2), 0.5)
    return Canvas(image, r <= 1 - 6 * s / radius, fieldmask)


def _dermoscopy_background(rng: np.random.Generator, size: int) -> Canvas:
    """Beige skin filling the frame, with the dermatoscope's dark circular vignette in the corners."""
    s = size / 112
    radius = size * rng.uniform(0.6, 0.64)
    r = radial_distance(size, size / 2, size / 2, radius)
    image = _filled(size, 0.06)
    fieldmask = r <= 1
    blend(image, fieldmask, _tinted((0.90, 0.72, 0.60), 1 + 0.04 * smooth_noise(rng, size, 16)))
    xs, ys = pixel_centres(size)
    margin = 5 * s
    square = (xs > margin) & (xs < size - margin) & (ys > margin) & (ys < size - margin)
    return Canvas(image, (r <= 1 - 6 * s / radius) & square, fieldmask)


def _dermoscopy_hairs(canvas: Canvas, rng: np.random.Generator) -> None:
    """One to three thin dark hairs across the field (over lesions too, as in real dermoscopy)."""
    size = canvas.image.shape[1]
    s = size / 112
    hairs = [
        _wander(rng, rng.uniform(0, size, 2), rng.uniform(0, 2 * math.pi), steps=12, step=6 * s, turn=0.15)
        for _ in range(int(rng.integers(1, 4)))
    ]
    blend(canvas.image, curves_mask(size, hairs, 1) & canvas.field, (0.22, 0.15, 0.10), 0.8)


def _fundus_background(rng: np.random.Generator, size: int) -> Canvas:
    """Orange-red retina in a black circle, darker towards its rim."""
    s = size / 112
    image, r, radius = _round_field(rng, size, (0.86, 0.40, 0.14), falloff=0.45, noise=0.05, noise_scale=12)
    return Canvas(image, r <= 1 - 6 * s / radius, r <= 1)


def _fundus_vessels(canvas: Canvas, centres: Mapping[str, tuple[float, float]], rng: np.random.Generator) -> None:
    """Four to six dark-red vessels branching out from the optic disc (or a random point without one)."""
    size = canvas.image.shape[1]
    s = size / 112
    if "optic disc" in centres:
        origin = np.asarray(centres["optic disc"])
    else:
        origin = rng.uniform(0.3, 0.7, 2) * size
    count = int(rng.integers(4, 7))
    base = rng.uniform(0, 2 * math.pi)
    vessels = [
        _wander(rng, origin, base + 2 * math.pi * k / count + rng.uniform(-0.3, 0.3), steps=14, step=5 * s, turn=0.25)
        for k in range(count)
    ]
    blend(canvas.image, curves_mask(size, vessels, 2 * s) & canvas.field, (0.55, 0.12, 0.06), 0.85)


def _ultrasound_geometry(size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(r, θ)`` of every pixel around the transducer apex at the top centre (θ from straight down)."""
    xs, ys = pixel_centres(size)
    dx, dy = xs - size / 2, ys - 0.02 * size
    return np.hypot(dx, dy), np.arctan2(dx, dy)


def _ultrasound_background(rng: np.random.Generator, size: int) -> Canvas:
    """A ±40° sector fanning down from the top, mid-grey echo fading with depth, on black."""
    r, theta = _ultrasound_geometry(size)
    sector = (r >= 0.08 * size) & (r <= 0.97 * size) & (np.abs(theta) <= math.radians(40))
    echo = 0.45 * (1 - 0.35 * r / size) + 0.05 * smooth_noise(rng, size, 10)
    image = _filled(size)
    blend(image, sector, _grey_field(echo))
    region = (r >= 0.18 * size) & (r <= 0.9 * size) & (np.abs(theta) <= math.radians(35))
    return Canvas(image, region, sector)


def _ultrasound_speckle(canvas: Canvas, rng: np.random.Generator) -> None:
    """Multiplicative speckle over the sector: ``0.3 + 0.7·e`` with ``e`` unit-mean exponential noise
    averaged over 2×2 pixels (mean 1, std ≈ 0.35)."""
    size = canvas.image.shape[1]
    speckle = rng.exponential(1.0, (size, size))
    speckle = 0.5 * (speckle + np.roll(speckle, 1, axis=1))
    speckle = 0.3 + 0.35 * (speckle + np.roll(speckle, 1, axis=0))
    canvas.image *= np.where(canvas.field, speckle, 0.0).astype(np.float32)[None]


def _wander(
    rng: np.random.Generator, start: np.ndarray, heading: float, steps: int, step: float, turn: float
) -> list[tuple[float, float]]:
    """A random-walk polyline: ``steps`` segments of length ``step``, heading changing by N(0, turn²)."""
    points = [(float(start[0]), float(start[1]))]
    x, y = points[0]
    for _ in range(steps):
        heading += rng.normal(0, turn)
        x, y = x + step * math.cos(heading), y + step * math.sin(heading)
        points.append((x, y))
    return points


# ---- the table -----------------------------------------------------------------------------------

STRUCTURE: Kind = "structure"
LESION: Kind = "lesion"

MODALITY_SPECS: dict[str, ModalitySpec] = {
    spec.key: spec
    for spec in (
        ModalitySpec(
            "ct",
            "CT image of the abdomen",
            structures=(
                ClassSpec(
                    "liver",
                    STRUCTURE,
                    Look(grey(0.62)),
                    "bright",
                    ("oval", "irregular"),
                    ("medium", "large"),
                    hosts=("cyst", "tumor", "calcification"),
                ),
                ClassSpec(
                    "spleen",
                    STRUCTURE,
                    Look(grey(0.46)),
                    "grey",
                    ("round", "oval"),
                    ("small", "medium"),
                    hosts=("cyst", "calcification"),
                ),
                ClassSpec(
                    "kidney",
                    STRUCTURE,
                    Look(grey(0.76), "core", grey(0.42), core=0.4),
                    "bright",
                    ("oval",),
                    ("small", "medium"),
                ),
                ClassSpec(
                    "stomach",
                    STRUCTURE,
                    Look(grey(0.5), "mottled", amount=0.5),
                    "mottled",
                    ("oval", "irregular"),
                    ("medium",),
                ),
            ),
            lesions=(
                ClassSpec("cyst", LESION, Look(grey(0.10)), "dark", ("round", "oval"), ("small", "medium")),
                ClassSpec("tumor", LESION, Look(grey(0.88), "mottled", amount=0.2), "bright", ("round", "irregular")),
                ClassSpec("calcification", LESION, Look(grey(1.0)), "very bright", ("round",), ("small",)),
            ),
            background=_ct_background,
        ),
        ModalitySpec(
            "mr",
            "MR image of the brain",
            structures=(
                ClassSpec("ventricle", STRUCTURE, Look(grey(0.08)), "dark", ("oval", "irregular"), ("small", "medium")),
                ClassSpec("thalamus", STRUCTURE, Look(grey(0.70)), "bright", ("round", "oval"), ("small", "medium")),
                ClassSpec(
                    "cerebellum",
                    STRUCTURE,
                    Look(grey(0.42), "striped", amount=0.45),
                    "striated",
                    ("round", "oval"),
                    ("medium", "large"),
                ),
            ),
            lesions=(
                ClassSpec(
                    "tumor",
                    LESION,
                    Look(grey(0.30), "ring", grey(0.95), ring=0.6),
                    "ring-enhancing",
                    ("round", "irregular"),
                ),
                ClassSpec(
                    "infarct",
                    LESION,
                    Look(grey(0.26), "mottled", amount=0.35),
                    "dark",
                    ("oval", "irregular"),
                    ("small", "medium"),
                ),
                ClassSpec("hemorrhage", LESION, Look(grey(0.97)), "very bright", ("round", "oval"), ("small",)),
            ),
            background=_mr_background,
        ),
        ModalitySpec(
            "x",
            "Chest X-ray",
            structures=(
                ClassSpec(
                    "right lung",
                    STRUCTURE,
                    Look(grey(0.10)),
                    "dark",
                    ("oval", "irregular"),
                    ("large",),
                    elongation=(1.3, 1.7),
                    side="left",
                    hosts=("nodule", "mass", "cavity"),
                ),
                ClassSpec(
                    "left lung",
                    STRUCTURE,
                    Look(grey(0.10)),
                    "dark",
                    ("oval", "irregular"),
                    ("large",),
                    elongation=(1.3, 1.7),
                    side="right",
                    hosts=("nodule", "mass", "cavity"),
                ),
                ClassSpec("heart", STRUCTURE, Look(grey(0.82)), "bright", ("round", "oval"), ("medium", "large")),
            ),
            lesions=(
                ClassSpec("nodule", LESION, Look(grey(0.96)), "very bright", ("round",), ("small",)),
                ClassSpec(
                    "mass",
                    LESION,
                    Look(grey(0.68), "mottled", amount=0.3),
                    "bright",
                    ("round", "irregular"),
                    ("medium", "large"),
                ),
                ClassSpec(
                    "cavity",
                    LESION,
                    Look(grey(0.06), "ring", grey(0.85), ring=0.6),
                    "thick-walled",
                    ("round", "oval"),
                    ("small", "medium"),
                ),
            ),
            background=_xray_background,
            finish=_xray_ribs,
        ),
        ModalitySpec(
            "pet",
            "PET image",
            structures=(
                ClassSpec("brain", STRUCTURE, Look(hot(0.50)), "warm", ("round", "oval"), ("medium", "large")),
                ClassSpec("heart", STRUCTURE, Look(hot(0.72)), "hot", ("round", "oval"), ("small", "medium")),
                ClassSpec("kidney", STRUCTURE, Look(hot(0.36)), "faint", ("oval",), ("small", "medium")),
            ),
            lesions=(
                ClassSpec("metastasis", LESION, Look(hot(1.0)), "very hot", ("round",), ("small",)),
                ClassSpec(
                    "lymphoma",
                    LESION,
                    Look(hot(0.62), "mottled", amount=0.35),
                    "mottled",
                    ("irregular",),
                    ("medium", "large"),
                ),
                ClassSpec(
                    "necrotic tumor",
                    LESION,
                    Look(hot(0.20), "ring", hot(0.92), ring=0.55),
                    "ring-enhancing",
                    ("round", "irregular"),
                ),
            ),
            background=_pet_background,
        ),
        ModalitySpec(
            "endoscopy",
            "Endoscopy image",
            structures=(
                ClassSpec("lumen", STRUCTURE, Look((0.12, 0.04, 0.05)), "dark", sizes=("medium", "large")),
                ClassSpec(
                    "fold",
                    STRUCTURE,
                    Look((0.96, 0.66, 0.62), "striped", amount=0.3),
                    "pale",
                    ("oval",),
                    ("medium", "large"),
                ),
                ClassSpec(
                    "papilla",
                    STRUCTURE,
                    Look((0.72, 0.28, 0.28), "core", (0.35, 0.08, 0.10), core=0.35),
                    "red",
                    ("round", "oval"),
                    ("small",),
                ),
            ),
            lesions=(
                ClassSpec(
                    "polyp", LESION, Look((1.0, 0.56, 0.50), "glossy", (1.0, 1.0, 1.0)), "glossy", ("round", "oval")
                ),
                ClassSpec(
                    "ulcer",
                    LESION,
                    Look((0.97, 0.93, 0.75), "ring", (0.60, 0.08, 0.08), ring=0.75),
                    "white",
                    ("oval", "irregular"),
                    ("small", "medium"),
                ),
                ClassSpec(
                    "bleeding", LESION, Look((0.42, 0.0, 0.02), "mottled", amount=0.3), "dark red", ("irregular",)
                ),
            ),
            background=_endoscopy_background,
        ),
        ModalitySpec(
            "dermoscopy",
            "Dermoscopy image of the skin",
            structures=(
                ClassSpec("freckle", STRUCTURE, Look((0.76, 0.52, 0.38)), "light brown", ("round", "oval"), ("small",)),
                ClassSpec(
                    "vessel",
                    STRUCTURE,
                    Look((0.82, 0.28, 0.30)),
                    "red",
                    ("oval",),
                    ("small", "medium"),
                    elongation=(2.5, 3.5),
                ),
                ClassSpec(
                    "scar",
                    STRUCTURE,
                    Look((0.98, 0.93, 0.90), "soft"),
                    "pale",
                    ("oval", "irregular"),
                    ("medium", "large"),
                ),
            ),
            lesions=(
                ClassSpec(
                    "melanoma",
                    LESION,
                    Look((0.22, 0.12, 0.08), "mottled", amount=0.45),
                    "dark brown",
                    ("irregular",),
                    ("medium", "large"),
                ),
                ClassSpec("nevus", LESION, Look((0.50, 0.30, 0.18)), "brown", ("round", "oval"), ("small", "medium")),
                ClassSpec(
                    "keratosis",
                    LESION,
                    Look((0.72, 0.58, 0.32), "striped", amount=0.25),
                    "yellow-brown",
                    ("oval", "irregular"),
                ),
            ),
            background=_dermoscopy_background,
            finish=_dermoscopy_hairs,
        ),
        ModalitySpec(
            "fundus",
            "Fundus photograph of the retina",
            structures=(
                ClassSpec(
                    "optic disc",
                    STRUCTURE,
                    Look((1.0, 0.86, 0.55), "core", (1.0, 0.98, 0.88), core=0.45),
                    "bright",
                    ("round", "oval"),
                    ("small", "medium"),
                ),
                ClassSpec(
                    "macula", STRUCTURE, Look((0.45, 0.14, 0.05), "soft"), "dark", ("round",), ("small", "medium")
                ),
            ),
            lesions=(
                ClassSpec(
                    "hemorrhage",
                    LESION,
                    Look((0.50, 0.02, 0.02), "mottled", amount=0.3),
                    "dark red",
                    ("round", "irregular"),
                ),
                ClassSpec(
                    "exudate",
                    LESION,
                    Look((1.0, 0.93, 0.40), "mottled", amount=0.3),
                    "yellow",
                    ("irregular",),
                    ("small", "medium"),
                ),
                ClassSpec(
                    "cotton wool spot",
                    LESION,
                    Look((0.97, 0.96, 0.92), "soft"),
                    "white",
                    ("oval", "irregular"),
                    ("small", "medium"),
                ),
            ),
            background=_fundus_background,
            underlay=_fundus_vessels,
        ),
        ModalitySpec(
            "ultrasound",
            "Ultrasound image of the abdomen",
            structures=(
                ClassSpec(
                    "gallbladder",
                    STRUCTURE,
                    Look(grey(0.03), "ring", grey(0.8), ring=0.82),
                    "anechoic",
                    ("oval",),
                    ("medium", "large"),
                    hosts=("stone",),
                ),
                ClassSpec(
                    "kidney",
                    STRUCTURE,
                    Look(grey(0.30), "core", grey(0.85), core=0.45),
                    "hypoechoic",
                    ("oval",),
                    ("medium", "large"),
                    hosts=("cyst",),
                ),
                ClassSpec(
                    "portal vein",
                    STRUCTURE,
                    Look(grey(0.05)),
                    "anechoic",
                    ("oval",),
                    ("small", "medium"),
                    elongation=(2.5, 3.5),
                ),
            ),
            lesions=(
                ClassSpec("cyst", LESION, Look(grey(0.02), below=1.7), "anechoic", ("round",), ("small", "medium")),
                ClassSpec("solid mass", LESION, Look(grey(0.14), "mottled", amount=0.5), "hypoechoic", ("irregular",)),
                ClassSpec("stone", LESION, Look(grey(1.0), below=0.2), "hyperechoic", ("round", "oval"), ("small",)),
            ),
            background=_ultrasound_background,
            finish=_ultrasound_speckle,
        ),
    )
}

if tuple(MODALITY_SPECS) != MODALITIES:  # keep the table in the shared order
    raise RuntimeError("MODALITY_SPECS must list exactly clinkd.data.records.MODALITIES, in order")
