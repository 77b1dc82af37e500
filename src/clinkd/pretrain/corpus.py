"""A generic synthetic grounding corpus: fresh scenes for pre-training the tiny base (``clinkd pretrain``).

Two looks (:data:`LOOKS`) share the shapes, the layout and the turns:

* ``colour`` (:data:`COLOUR`): a dim background (a grey level or a tinted one; flat, a gradient or clouds) and
  1–N objects, each a shape (:data:`SHAPES`) with an appearance (:data:`APPEARANCES`: a solid colour, or a
  striped or dotted pattern over a colour), named by the pair: ``red ring``, ``striped square`` (54 names). Every
  background channel stays below :data:`BACKGROUND_MAX` and every object pixel's brightest channel above
  :data:`OBJECT_MIN`, so an object's pixels show its box (tested).
* ``tissue`` (:data:`TISSUE`): the statistics of medical images without any of their content: a textured grey
  tissue of a random level inside a black field of view (full frame, ellipse or disc), tinted grey or warm as a
  whole, and objects told apart only by grey level and texture relative to that tissue (``bright``, ``dark``,
  ``pale``, ``dim``, ``striped``, ``spotted``, ``grainy``: 42 names), a tenth to four tenths of the side, so
  many are smaller than one 28-px visual token cell.

Names are unique within a scene and object boxes are disjoint, at least :data:`GAP` pixels apart, so every
question has one answer.

None of the benchmark enters: the shapes, looks, names and sentences are this module's own; only the drawing
primitives of :mod:`clinkd.synth.draw` and the 3×3 location words of :func:`clinkd.synth.scene.location_word`
are shared.

Turns use the benchmark's markup (Qwen-VL ``<ref>``/``<box>`` on the 0–1000 scale), which
:class:`clinkd.batching.TrainCollator` converts to the model's box style like any Med-GRIT turn:

* grounding  — ``Where is the <ref>red ring</ref>?`` → ``<ref>red ring</ref><box>(x1,y1),(x2,y2)</box>``
* referring  — ``What is in <box>(x1,y1),(x2,y2)</box>?`` → ``red ring``
* counting   — ``How many rings are there?`` → ``2``
* captioning — ``Describe the picture.`` → ``A red ring in the upper left part and a striped square in the central
part.``

Determinism: scene ``index`` of a stream (:data:`STREAMS`) is drawn from ``SeedSequence([seed, stream, index])``
alone, so a resumed run sees exactly the scenes it would have seen. Curriculum: a scene of training step ``t``
holds ``U{1..objects_allowed(t)}`` objects, the bound growing from 1 to ``max_objects`` over ``curriculum_steps``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from clinkd.batching import ChatExample
from clinkd.boxes import Box, BoxStyle, format_ref
from clinkd.config import PRETRAIN_TASKS
from clinkd.data.records import Turn
from clinkd.pretrain.words import MEDICAL_WORDS, WORDS
from clinkd.synth.draw import RGB, Blob, MaskCounter, blend, ellipse_mask, pixel_centres, planes, smooth_noise
from clinkd.synth.scene import location_word

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "ring", "cross", "blob")
SCAN_SHAPES: tuple[str, ...] = ("disc", "oval", "blob")  # the benchmark's kinds of outline: round, elongated, irregular
PLURALS: dict[str, str] = {shape: shape + ("es" if shape.endswith("s") else "s") for shape in (*SHAPES, *SCAN_SHAPES)}
COLOURS: dict[str, RGB] = {
    "red": (0.92, 0.16, 0.14),
    "green": (0.18, 0.86, 0.24),
    "blue": (0.24, 0.42, 0.98),
    "yellow": (0.96, 0.90, 0.16),
    "orange": (1.0, 0.56, 0.10),
    "purple": (0.72, 0.28, 0.96),
    "white": (0.95, 0.95, 0.95),
}
PATTERNS: tuple[str, ...] = ("striped", "dotted")
APPEARANCES: tuple[str, ...] = (*COLOURS, *PATTERNS)
PATTERN_BASES: tuple[str, ...] = tuple(colour for colour in COLOURS if colour != "white")  # white is the accent
PATTERN_ACCENT: RGB = (0.97, 0.97, 0.97)


@dataclass(frozen=True)
class CorpusLook:
    """How a corpus draws its scenes: the appearance words (a name is ``appearance shape``) and object sizes
    (the bounding square's side / image side)."""

    name: str
    appearances: tuple[str, ...]
    extent_range: tuple[float, float]
    shapes: tuple[str, ...] = SHAPES
    vocabulary: tuple[str, ...] = ()  # more words for the base's tokenizer only, never drawn into the corpus

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f"{appearance} {shape}" for appearance in self.appearances for shape in self.shapes)


# the smallest colour object still covers most of a 28-px cell; tissue objects go down to 11 px, like small lesions
COLOUR = CorpusLook("colour", APPEARANCES, (0.2, 0.4))
TISSUE_LEVELS: dict[str, tuple[float, float]] = {
    "bright": (0.3, 0.45),
    "dark": (-0.25, -0.2),
    "pale": (0.12, 0.18),
    "dim": (-0.14, -0.1),
}
TISSUE = CorpusLook("tissue", (*TISSUE_LEVELS, "striped", "spotted", "grainy"), (0.1, 0.4))
# scan: the benchmark's eight kinds of canvas (clinkd.synth.modalities' painters), objects of its sizes and outlines
SCAN = CorpusLook(
    "scan", (*TISSUE_LEVELS, "mottled", "striped", "spotted", "ringed"), (0.12, 0.42), SCAN_SHAPES, MEDICAL_WORDS
)
LOOKS: dict[str, CorpusLook] = {look.name: look for look in (COLOUR, TISSUE, SCAN)}
DARK_CANVAS = 0.25  # below this luminance a canvas has no room for dark or dim objects (PET's dim torso)
MIN_CONTRAST = 0.08  # least luminance step between a solid scan object and the canvas under it
TISSUE_TINTS: tuple[RGB, ...] = (
    (1.0, 1.0, 1.0),
    (1.0, 0.62, 0.45),
    (1.0, 0.72, 0.7),
    (1.0, 0.78, 0.4),
)  # grey, warm, rose, amber
FIELDS: tuple[str, ...] = ("frame", "ellipse", "disc")
OUTSIDE_LEVEL = 0.02  # the black around a field of view

BACKGROUND_MAX = 0.45
OBJECT_MIN = 0.65
BACKGROUND_TEXTURES: tuple[str, ...] = ("flat", "gradient", "clouds")
GAP = 2  # pixels between object boxes at 112 px
RING_HOLE = 0.55  # inner / outer radius of a ring
PLACEMENT_TRIES = 6
MAX_LAYOUTS = 50
GRAIN = 0.015  # std of the per-pixel noise added last, as in clinkd.synth.scene
NAMES: tuple[str, ...] = COLOUR.names

TASKS = PRETRAIN_TASKS  # the config validates pretrain.tasks against the same names
CORPUS_TEMPLATES: dict[str, tuple[str, ...]] = {
    "grounding": ("Where is the {ref}?", "Locate the {ref}.", "Find the {ref} in the picture.", "Point out the {ref}."),
    "referring": ("What is in {box}?", "Name the shape at {box}.", "Which object lies in {box}?"),
    "counting": ("How many {group} are there?", "Count the {group} in the picture."),
    "captioning": ("Describe the picture.", "What do you see?", "List the shapes in the picture."),
}
STREAMS: dict[str, int] = {"language": 1, "dense": 2, "heldout": 3, "tokenizer": 4}
TOKENIZER_SCENES = 300


@dataclass(frozen=True)
class CorpusObject:
    """A drawn object: its name (``appearance shape``), full-image mask, pixel box (exclusive ends) and 0–1000 box."""

    appearance: str
    shape: str
    mask: np.ndarray
    pixel_box: tuple[int, int, int, int]
    box: Box

    @property
    def name(self) -> str:
        return f"{self.appearance} {self.shape}"


@dataclass(frozen=True)
class CorpusScene:
    """A rendered scene (``uint8`` RGB ``(S, S, 3)``) and its objects in drawing order."""

    pixels: np.ndarray
    objects: tuple[CorpusObject, ...]


def scene_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    """The random stream of one scene: ``SeedSequence([seed, STREAMS[stream], index])``."""
    return np.random.default_rng(np.random.SeedSequence([seed, STREAMS[stream], index]))


def objects_allowed(step: int, max_objects: int, curriculum_steps: int) -> int:
    """The most objects a scene of training ``step`` holds: 1 at step 0, ``max_objects`` from ``curriculum_steps``
    on."""
    if curriculum_steps <= 0:
        return max_objects
    return 1 + min(max_objects - 1, (max_objects - 1) * step // curriculum_steps)


def shape_mask(shape: str, size: int, cx: float, cy: float, extent: float, rng: np.random.Generator) -> np.ndarray:
    """The pixels (centres) of ``shape`` inside the square of side ``extent`` centred at ``(cx, cy)``."""
    half = extent / 2
    xs, ys = pixel_centres(size)
    dx, dy = np.abs(xs - cx), ys - cy
    if shape == "circle":
        return ellipse_mask(size, cx, cy, half, half)
    if shape == "ring":
        return ellipse_mask(size, cx, cy, half, half) & ~ellipse_mask(size, cx, cy, RING_HOLE * half, RING_HOLE * half)
    if shape == "square":
        return (dx <= half) & (np.abs(dy) <= half)
    if shape == "triangle":  # apex up: the half-width grows from 0 at the top to ``half`` at the base
        return (dy <= half) & (dx <= (dy + half) / 2)
    if shape == "cross":
        arm = extent / 6
        return ((dx <= half) & (np.abs(dy) <= arm)) | ((dx <= arm) & (np.abs(dy) <= half))
    if shape == "blob":
        return _blob(size, cx, cy, half, rng)
    if shape == "disc":
        return ellipse_mask(size, cx, cy, half, half)
    if shape == "oval":  # the benchmark's oval: axis ratio 1.45–2 at any angle (a ≤ half keeps it in the square)
        return Blob(cx, cy, half, half / rng.uniform(1.45, 2.0), rng.uniform(0, math.pi)).raster(size).full_mask(size)
    raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join((*SHAPES, *SCAN_SHAPES))}")


def _blob(size: int, cx: float, cy: float, half: float, rng: np.random.Generator) -> np.ndarray:
    """An irregular :class:`~clinkd.synth.draw.Blob` whose radius ``ρ·a ≤ (1 + ΣA)·a = half`` stays in the square."""
    harmonics = tuple((k, rng.uniform(0.08, 0.16), rng.uniform(0, 2 * math.pi)) for k in (2, 3))
    a = half / (1 + sum(amplitude for _, amplitude, _ in harmonics))
    blob = Blob(cx, cy, a, a * rng.uniform(0.7, 1.0), rng.uniform(0, math.pi), harmonics)
    return blob.raster(size).full_mask(size)


def pixel_extent(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``x1, y1, x2, y2`` of the mask's pixels, exclusive ends."""
    rows, cols = np.nonzero(mask)
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def place(
    shape: str, size: int, blocked: np.ndarray, rng: np.random.Generator, extent_range: tuple[float, float]
) -> np.ndarray | None:
    """The mask of ``shape`` at a size drawn from ``extent_range``, its bounding square put uniformly among
    the corners where it touches no ``blocked`` pixel; a size that fits nowhere is redrawn smaller. ``None``:
    no size fits."""
    counter = MaskCounter(blocked)
    low, high = (bound * size for bound in extent_range)
    for _ in range(PLACEMENT_TRIES):
        extent = rng.uniform(low, high)
        side = math.ceil(extent) + 1  # ≥ extent + 1: the shape's pixel centres stay inside the square
        rows, cols = np.nonzero(counter.free_corners(side, side))
        if rows.size:
            pick = int(rng.integers(rows.size))
            return shape_mask(shape, size, cols[pick] + side / 2, rows[pick] + side / 2, extent, rng)
        high = (low + high) / 2
    return None


def layout(
    rng: np.random.Generator,
    size: int,
    count: int,
    look: CorpusLook = COLOUR,
    outside: np.ndarray | None = None,
    names: tuple[str, ...] | None = None,
) -> tuple[CorpusObject, ...]:
    """``count`` objects with distinct names (of ``names``, default all of ``look``'s), their boxes at least ``GAP``
    (scaled to ``size``) apart and off the ``outside`` pixels (a field of view's black); a layout where an object finds
    no room is redrawn (the names stay)."""
    names = look.names if names is None else names
    names = [names[index].split(" ") for index in rng.choice(len(names), size=count, replace=False)]
    outside = np.zeros((size, size), dtype=bool) if outside is None else outside
    for _ in range(MAX_LAYOUTS):
        objects = _try_layout(names, size, rng, look.extent_range, outside)
        if objects is not None:
            return objects
    raise RuntimeError(f"no layout of {count} objects found in {MAX_LAYOUTS} attempts at {size}px")


def _try_layout(
    names: list[list[str]], size: int, rng: np.random.Generator, extent_range: tuple[float, float], outside: np.ndarray
) -> tuple[CorpusObject, ...] | None:
    """One attempt at placing ``(appearance, shape)`` pairs in order; None when one finds no room."""
    gap = math.ceil(GAP * size / 112)
    blocked = outside.copy()
    objects = []
    for appearance, shape in names:
        mask = place(shape, size, blocked, rng, extent_range)
        if mask is None:
            return None
        x1, y1, x2, y2 = pixel_extent(mask)
        blocked[max(0, y1 - gap) : y2 + gap, max(0, x1 - gap) : x2 + gap] = True
        box = Box.from_pixels(x1, y1, x2, y2, size, size).rounded()
        objects.append(CorpusObject(appearance, shape, mask, (x1, y1, x2, y2), box))
    return tuple(objects)


def clouds(rng: np.random.Generator, size: int) -> np.ndarray:
    """Zero-mean, unit-std smooth noise on a grid of about 16-px cells (at least 4 per side)."""
    return smooth_noise(rng, size, max(4, size // 16))


def shading(rng: np.random.Generator, size: int) -> np.ndarray:
    """An object's ±5 % brightness clouds, clipped to ``[0.9, 1.1]``."""
    return np.clip(1 + 0.05 * clouds(rng, size), 0.9, 1.1)


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Planar ``(3, S, S)``: a grey level U(0.05, 0.3) tinted per channel by U(−0.05, 0.05), plus a texture
    (flat, a linear gradient of ±0.06 or clouds of std 0.04), clipped to ``[0, BACKGROUND_MAX]``."""
    level = rng.uniform(0.05, 0.3) + rng.uniform(-0.05, 0.05, 3)
    image = np.broadcast_to(planes(level), (3, size, size)).copy()
    texture = BACKGROUND_TEXTURES[int(rng.integers(len(BACKGROUND_TEXTURES)))]
    if texture == "gradient":
        xs, ys = pixel_centres(size)
        angle = rng.uniform(0, 2 * math.pi)
        image += (0.12 * ((xs * math.cos(angle) + ys * math.sin(angle)) / size - 0.5)).astype(np.float32)
    elif texture == "clouds":
        image += 0.04 * clouds(rng, size)
    return np.clip(image, 0, BACKGROUND_MAX)


def pattern_mask(appearance: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Where a pattern's accent goes: bands 4 px wide at a random angle, or 3-px dots on a 7-px grid (at 112 px)."""
    scale = size / 112
    xs, ys = pixel_centres(size)
    angle = rng.uniform(0, math.pi)
    u = xs * math.cos(angle) + ys * math.sin(angle)
    if appearance == "striped":
        return np.sin(2 * math.pi * u / (8 * scale) + rng.uniform(0, 2 * math.pi)) > 0
    v = -xs * math.sin(angle) + ys * math.cos(angle)
    period = 7 * scale
    du, dv = (u + rng.uniform(0, period)) % period - period / 2, (v + rng.uniform(0, period)) % period - period / 2
    return np.hypot(du, dv) <= 1.6 * scale


def paint(image: np.ndarray, obj: CorpusObject, rng: np.random.Generator) -> None:
    """Paint ``obj`` into the planar ``image``: its colour shaded by ±10 % clouds, or a pattern's base and accent."""
    size = image.shape[1]
    shade = shading(rng, size)
    if obj.appearance in COLOURS:
        blend(image, obj.mask, planes(COLOURS[obj.appearance]) * shade)
        return
    base = COLOURS[PATTERN_BASES[int(rng.integers(len(PATTERN_BASES)))]]
    blend(image, obj.mask, planes(base) * shade)
    blend(image, obj.mask & pattern_mask(obj.appearance, size, rng), PATTERN_ACCENT)


def field_of_view(rng: np.random.Generator, size: int) -> np.ndarray:
    """The pixels outside a tissue scene's field of view: none (full frame), outside a centred ellipse of half
    axes 0.42–0.5 of the side, or outside a centred disc of radius 0.48."""
    field = FIELDS[int(rng.integers(len(FIELDS)))]
    if field == "frame":
        return np.zeros((size, size), dtype=bool)
    radii = (0.48 * size,) * 2 if field == "disc" else tuple(rng.uniform(0.42, 0.5, 2) * size)
    return ~ellipse_mask(size, size / 2, size / 2, *radii)


def tissue_ground(rng: np.random.Generator, size: int, outside: np.ndarray) -> tuple[np.ndarray, float]:
    """Grey luminance ``(S, S)``: a tissue level U(0.25, 0.5) with clouds of std 0.06 inside the field of view,
    :data:`OUTSIDE_LEVEL` outside; returns it and the level."""
    level = float(rng.uniform(0.25, 0.5))
    luminance = (level + 0.06 * clouds(rng, size)).astype(np.float32)
    luminance[outside] = OUTSIDE_LEVEL
    return luminance, level


def paint_tissue(luminance: np.ndarray, obj: CorpusObject, level: float, rng: np.random.Generator) -> None:
    """Paint ``obj`` into the grey ``luminance`` relative to the tissue ``level``: a solid offset
    (:data:`TISSUE_LEVELS`) shaded by ±5 % clouds, bands of +0.2/−0.15, dark ground with bright 3-px dots, or
    +0.1 with per-pixel grain of std 0.12."""
    size = luminance.shape[0]
    shade = shading(rng, size)
    if obj.appearance in TISSUE_LEVELS:
        value = (level + rng.uniform(*TISSUE_LEVELS[obj.appearance])) * shade
    elif obj.appearance == "striped":
        value = np.where(pattern_mask("striped", size, rng), level + 0.2, level - 0.15)
    elif obj.appearance == "spotted":
        value = np.where(pattern_mask("dotted", size, rng), level + 0.3, level - 0.12)
    else:
        value = level + 0.1 + 0.12 * rng.standard_normal((size, size))
    luminance[obj.mask] = np.clip(value, 0.03, 1.0)[obj.mask]


def luminance_of(image: np.ndarray) -> np.ndarray:
    """Rec. 601 luminance ``(S, S)`` of a planar ``(3, S, S)`` image."""
    return 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]


def scan_canvas(rng: np.random.Generator, size: int):
    """One of the benchmark's eight canvases (background, and its overlay to draw last), no object of its own."""
    from clinkd.synth.modalities import MODALITY_SPECS

    spec = list(MODALITY_SPECS.values())[int(rng.integers(len(MODALITY_SPECS)))]
    canvas = spec.background(rng, size)
    spec.underlay(canvas, {}, rng)  # anatomy tied to objects (fundus vessels) starts anywhere
    return canvas, spec.finish


def scan_names(canvas_level: float) -> tuple[str, ...]:
    """The scan names visible on a canvas of mean luminance ``canvas_level``: no dark or dim object on a dark one."""
    hidden = ("dark", "dim") if canvas_level < DARK_CANVAS else ()
    return tuple(name for name in SCAN.names if name.split(" ")[0] not in hidden)


def paint_scan(image: np.ndarray, obj: CorpusObject, rng: np.random.Generator) -> None:
    """Paint ``obj`` into the planar ``image`` relative to the canvas under it, keeping its hue: the mean colour
    ``c`` under the mask, of luminance ``L``, is scaled to a target luminance ``L + Δ``. Solid appearances take the
    tissue offsets (:data:`TISSUE_LEVELS`, at least :data:`MIN_CONTRAST` away); ``mottled`` is +0.15 with smooth
    clouds of std 0.12, ``striped`` bands of +0.2/−0.15, ``spotted`` bright dots on −0.12, ``ringed`` a bright rim
    (outer 40 % of the radius, +0.35) round a dark core (−0.15)."""
    size = image.shape[1]
    colour = image[:, obj.mask].mean(axis=1)
    level = max(float(luminance_of(colour[:, None, None])[0, 0]), 0.05)
    if obj.appearance in TISSUE_LEVELS:
        delta = float(rng.uniform(*TISSUE_LEVELS[obj.appearance]))
        delta = math.copysign(max(abs(delta), MIN_CONTRAST), delta) * shading(rng, size)
    elif obj.appearance == "mottled":
        delta = 0.15 + 0.12 * clouds(rng, size)
    elif obj.appearance == "striped":
        delta = np.where(pattern_mask("striped", size, rng), 0.2, -0.15)
    elif obj.appearance == "spotted":
        delta = np.where(pattern_mask("dotted", size, rng), 0.3, -0.12)
    else:
        delta = np.where(_rim(obj.mask), 0.35, -0.15)
    target = np.clip(level + delta, 0.03, 1.0) / level
    painted = np.clip(colour[:, None, None] * np.broadcast_to(target, (size, size))[None], 0, 1).astype(np.float32)
    image[:, obj.mask] = painted[:, obj.mask]


def _rim(mask: np.ndarray) -> np.ndarray:
    """The outer 40 % of a mask's radius (distance to its centroid over the largest such distance)."""
    rows, cols = np.nonzero(mask)
    cy, cx = rows.mean(), cols.mean()
    ys, xs = np.indices(mask.shape)
    distance = np.hypot(ys - cy, xs - cx)
    return distance >= 0.6 * distance[mask].max()


def draw_scene(rng: np.random.Generator, size: int, count: int, look: CorpusLook = COLOUR) -> CorpusScene:
    """A scene of ``count`` objects of ``look``: layout, background, objects, then grain N(0, GRAIN²), rounded
    to ``uint8``. A tissue scene is drawn grey and tinted as a whole; a scan scene on one of the benchmark's
    canvases, its objects inside the canvas's region, with the canvas's overlay (ribs, hairs, speckle) on top."""
    if look.name == "scan":
        canvas, finish = scan_canvas(rng, size)
        level = float(luminance_of(canvas.image)[canvas.region].mean())
        objects = layout(rng, size, count, look, ~canvas.region, scan_names(level))
        for obj in objects:
            paint_scan(canvas.image, obj, rng)
        finish(canvas, rng)
        image = canvas.image
    elif look.name == "tissue":
        outside = field_of_view(rng, size)
        objects = layout(rng, size, count, look, outside)
        luminance, level = tissue_ground(rng, size, outside)
        for obj in objects:
            paint_tissue(luminance, obj, level, rng)
        image = luminance[None] * planes(TISSUE_TINTS[int(rng.integers(len(TISSUE_TINTS)))])
    else:
        objects = layout(rng, size, count, look)
        image = background(rng, size)
        for obj in objects:
            paint(image, obj, rng)
    image += rng.standard_normal((size, size), dtype=np.float32) * np.float32(GRAIN)
    pixels = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)  # round half up; values are >= 0
    return CorpusScene(np.ascontiguousarray(pixels.transpose(1, 2, 0)), objects)


# ---- turns ----------------------------------------------------------------------------------------


def _pick(objects: tuple[CorpusObject, ...], rng: np.random.Generator) -> CorpusObject:
    return objects[int(rng.integers(len(objects)))]


def count_group(
    objects: tuple[CorpusObject, ...], rng: np.random.Generator, look: CorpusLook = COLOUR
) -> tuple[str, int]:
    """A group to count and its size: all shapes, one shape or one appearance. The shape or appearance is
    half the time that of an object present, so answers are not mostly 0."""
    kind = ("all", "shape", "appearance")[int(rng.integers(3))]
    if kind == "all":
        return "shapes", len(objects)
    present = rng.random() < 0.5
    values = look.shapes if kind == "shape" else look.appearances
    value = getattr(_pick(objects, rng), kind) if present else values[int(rng.integers(len(values)))]
    group = PLURALS[value] if kind == "shape" else f"{value} shapes"
    return group, sum(getattr(obj, kind) == value for obj in objects)


def caption(objects: tuple[CorpusObject, ...]) -> str:
    """``A red ring in the upper left part and an orange cross in the central part.``: objects top to bottom."""
    ordered = sorted(objects, key=lambda obj: (obj.box.y1 + obj.box.y2, obj.box.x1 + obj.box.x2))
    parts = [
        f"{'an' if obj.name[0] in 'aeiou' else 'a'} {obj.name} in the {location_word(obj.box)} part" for obj in ordered
    ]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text[0].upper() + text[1:] + "."


def make_turn(
    task: str, objects: tuple[CorpusObject, ...], rng: np.random.Generator, look: CorpusLook = COLOUR
) -> Turn:
    """One QA turn of ``task`` about a scene's ``objects`` (see the module docstring for the four tasks)."""
    if task not in CORPUS_TEMPLATES:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    template = CORPUS_TEMPLATES[task][int(rng.integers(len(CORPUS_TEMPLATES[task])))]
    if task == "grounding":
        target = _pick(objects, rng)
        return Turn(
            template.format(ref=format_ref(target.name)), format_ref(target.name) + target.box.to_text(BoxStyle.QWEN_VL)
        )
    if task == "referring":
        target = _pick(objects, rng)
        return Turn(template.format(box=target.box.to_text(BoxStyle.QWEN_VL)), target.name)
    if task == "counting":
        group, count = count_group(objects, rng, look)
        return Turn(template.format(group=group), str(count))
    return Turn(template, caption(objects))


def task_weights(mix: Mapping[str, float]) -> np.ndarray:
    """The probabilities of :data:`TASKS` from a (partial) weight mapping."""
    weights = np.array([mix.get(task, 0.0) for task in TASKS], dtype=np.float64)
    return weights / weights.sum()


def png(pixels: np.ndarray) -> io.BytesIO:
    """The scene as an in-memory PNG: :func:`clinkd.model.processor.load_image` opens it like a file, so fresh
    scenes never touch the disk."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer


class LanguageStream(Dataset):
    """The language stage's examples: example ``i`` is one turn about a fresh scene of training step
    ``i // batch_size`` (read in order, so its curriculum level is that of the step it is trained at)."""

    def __init__(
        self,
        seed: int,
        steps: int,
        batch_size: int,
        image_size: int,
        max_objects: int,
        curriculum_steps: int,
        tasks: Mapping[str, float],
        look: CorpusLook = COLOUR,
    ):
        self.seed, self.steps, self.batch_size, self.image_size, self.look = seed, steps, batch_size, image_size, look
        self.max_objects, self.curriculum_steps = max_objects, curriculum_steps
        self.weights = task_weights(tasks)

    def __len__(self) -> int:
        return self.steps * self.batch_size

    def scene(self, index: int) -> tuple[CorpusScene, np.random.Generator]:
        """Scene ``index`` and its generator (which then draws the turn)."""
        rng = scene_rng(self.seed, "language", index)
        bound = objects_allowed(index // self.batch_size, self.max_objects, self.curriculum_steps)
        return draw_scene(rng, self.image_size, int(rng.integers(1, bound + 1)), self.look), rng

    def __getitem__(self, index: int) -> ChatExample:
        scene, rng = self.scene(index)
        task = TASKS[int(rng.choice(len(TASKS), p=self.weights))]
        return ChatExample(png(scene.pixels), (make_turn(task, scene.objects, rng, self.look),))


def tokenizer_texts(
    seed: int, image_size: int, max_objects: int, scenes: int = TOKENIZER_SCENES, look: CorpusLook = COLOUR
) -> list[str]:
    """The texts the base's tokenizer learns from: a turn of every task on ``scenes`` laid-out scenes of ``look``
    (no pixels needed), every name, the generic English word list and the look's own ``vocabulary``
    (:mod:`clinkd.pretrain.words`; the scan look's medical words)."""
    texts = [" ".join(WORDS), *([" ".join(look.vocabulary)] if look.vocabulary else []), " ".join(look.names)]
    for index in range(scenes):
        rng = scene_rng(seed, "tokenizer", index)
        objects = layout(rng, image_size, int(rng.integers(1, max_objects + 1)), look)
        for task in TASKS:
            turn = make_turn(task, objects, rng, look)
            texts += [turn.question, turn.answer]
    return texts
