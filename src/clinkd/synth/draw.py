"""Raster primitives for the synthetic images: pixel grids, blobs, smooth noise, curves and object looks.

Images are planar float32 RGB arrays of shape ``(3, S, S)`` in ``[0, 1]`` (channel-first keeps numpy's
inner loops long: per-pixel work on an ``(S, S, 3)`` array runs in loops of 3); masks are boolean
``(S, S)`` arrays.
Pixel ``(x, y)`` covers ``[x, x+1) × [y, y+1)``, so geometry is evaluated at pixel centres ``(x+½, y+½)``
and a mask's pixel extent is ``[min x, max x + 1) × [min y, max y + 1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[float, float, float]
Texture = Literal["smooth", "mottled", "ring", "core", "striped", "glossy", "soft"]


@lru_cache(maxsize=8)
def pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(xs, ys)``: the pixel-centre coordinates of a ``size × size`` image (read-only arrays)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    xs.flags.writeable = False
    ys.flags.writeable = False
    return xs, ys


def ellipse_mask(size: int, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """Pixels whose centre satisfies ``((x-cx)/rx)² + ((y-cy)/ry)² ≤ 1``."""
    xs, ys = pixel_centres(size)
    return ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0


def radial_distance(size: int, cx: float, cy: float, radius: float) -> np.ndarray:
    """``√((x-cx)² + (y-cy)²) / radius`` at every pixel centre (1 on the circle of ``radius``)."""
    xs, ys = pixel_centres(size)
    return np.hypot(xs - cx, ys - cy) / radius


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-std value noise: a ``(cells+1)²`` Gaussian grid, smoothstep-interpolated to ``size²``."""
    grid = rng.standard_normal((cells + 1, cells + 1))
    position = (np.arange(size) + 0.5) * cells / size
    index = np.minimum(position.astype(int), cells - 1)
    t = position - index
    t = t * t * (3 - 2 * t)
    rows = grid[index] * (1 - t)[:, None] + grid[index + 1] * t[:, None]
    field = rows[:, index] * (1 - t)[None, :] + rows[:, index + 1] * t[None, :]
    return ((field - field.mean()) / (field.std() + 1e-12)).astype(np.float32)


def curves_mask(size: int, polylines: list[list[tuple[float, float]]], width: float) -> np.ndarray:
    """Polylines of ``width`` pixels, each through its points (PIL's rasteriser, deterministic)."""
    canvas = Image.new("L", (size, size), 0)
    pen = ImageDraw.Draw(canvas)
    for points in polylines:
        pen.line(points, fill=255, width=max(1, round(width)), joint="curve")
    return np.asarray(canvas) > 127


def planes(colour: RGB | np.ndarray) -> np.ndarray:
    """An RGB triple as a ``(3, 1, 1)`` float32 array that broadcasts over a planar image."""
    return np.asarray(colour, dtype=np.float32).reshape(3, 1, 1)


def blend(image: np.ndarray, mask: np.ndarray, colour: RGB | np.ndarray, alpha: float | np.ndarray = 1.0) -> None:
    """In place: ``image += α·mask·(colour − image)``, i.e. ``colour`` over ``image`` where ``mask``.

    ``image`` is planar ``(3, H, W)``; ``colour`` an RGB triple or an array broadcasting to it;
    ``alpha`` a scalar or an ``(H, W)`` map.
    """
    colour = planes(colour) if np.ndim(colour) == 1 else colour
    weight = mask.astype(np.float32)
    if np.ndim(alpha) or alpha != 1.0:
        weight *= np.asarray(alpha, dtype=np.float32)
    image += weight * (colour - image)


class MaskCounter:
    """Counts of mask pixels in boxes, from the summed-area table ``T[y, x] = Σ mask[:y, :x]``."""

    def __init__(self, mask: np.ndarray) -> None:
        self.size = mask.shape[0]
        self._table = np.zeros((self.size + 1, self.size + 1), dtype=np.int32)
        self._table[1:, 1:] = mask.cumsum(axis=0, dtype=np.int32).cumsum(axis=1)

    def free_corners(self, width: int, height: int) -> np.ndarray:
        """``free[y, x]``: whether the box ``[x, x+width) × [y, y+height)`` holds no mask pixel.

        Shape ``(S - height + 1, S - width + 1)``; count = ``T[y+h, x+w] - T[y, x+w] - T[y+h, x] + T[y, x]``.
        """
        table, end = self._table, self.size + 1
        counts = (
            table[height:end, width:end]
            - table[: end - height, width:end]
            - table[height:end, : end - width]
            + table[: end - height, : end - width]
        )
        return counts == 0


@dataclass(frozen=True)
class BlobRaster:
    """A rasterised blob inside its bounding window ``image[window]``: mask and normalised coordinates.

    ``radial`` is ``r/ρ(φ)`` (0 at the centre, 1 on the outline); ``along``/``across`` are the
    coordinates along the major/minor axis divided by the semi-axes (±1 at the ellipse's ends).
    All four arrays have the window's shape.
    """

    window: tuple[slice, slice]
    mask: np.ndarray
    radial: np.ndarray
    along: np.ndarray
    across: np.ndarray
    pixel_box: tuple[int, int, int, int]  # x1, y1, x2, y2 in image pixels, exclusive ends

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def full_mask(self, size: int) -> np.ndarray:
        """The mask on the whole ``size × size`` image."""
        mask = np.zeros((size, size), dtype=bool)
        mask[self.window] = self.mask
        return mask


_OUTLINE_PHI = np.linspace(0, 2 * math.pi, 72, endpoint=False)
_OUTLINE_COS, _OUTLINE_SIN = np.cos(_OUTLINE_PHI), np.sin(_OUTLINE_PHI)


@dataclass(frozen=True)
class Blob:
    """A rotated ellipse whose radius is modulated by harmonics: ``ρ(φ) = 1 + Σₖ Aₖ cos(kφ + pₖ)``.

    A pixel belongs to the blob when ``√(u² + v²) ≤ ρ(atan2(v, u))`` with ``u``, ``v`` its rotated
    offsets from the centre divided by the semi-axes ``a`` (major) and ``b``.
    """

    cx: float
    cy: float
    a: float
    b: float
    angle: float
    harmonics: tuple[tuple[int, float, float], ...] = ()  # (k, amplitude, phase)

    def reach(self) -> tuple[float, float, float, float]:
        """How far the outline reaches left, up, right and down of the centre, plus 1 px each.

        The outline is ``ρ(φ)·(a cos φ, b sin φ)`` rotated by ``angle``, sampled at 72 angles; the
        1 px margin covers what lies between samples (well under 0.5 px for the sizes used here).
        """
        rho = np.ones_like(_OUTLINE_PHI)
        for k, amplitude, phase in self.harmonics:
            rho += amplitude * np.cos(k * _OUTLINE_PHI + phase)
        u, v = rho * self.a * _OUTLINE_COS, rho * self.b * _OUTLINE_SIN
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        x, y = u * cos - v * sin, u * sin + v * cos
        return float(-x.min()) + 1, float(-y.min()) + 1, float(x.max()) + 1, float(y.max()) + 1

    def raster(self, size: int) -> BlobRaster | None:
        """The blob on a ``size × size`` grid, or ``None`` when no pixel centre falls inside it."""
        left, up, right, down = self.reach()
        x0, x1 = max(0, math.floor(self.cx - left)), min(size, math.ceil(self.cx + right) + 1)
        y0, y1 = max(0, math.floor(self.cy - up)), min(size, math.ceil(self.cy + down) + 1)
        if x0 >= x1 or y0 >= y1:
            return None
        xs, ys = pixel_centres(size)
        dx, dy = xs[y0:y1, x0:x1] - self.cx, ys[y0:y1, x0:x1] - self.cy
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        along = (dx * cos + dy * sin) / self.a
        across = (-dx * sin + dy * cos) / self.b
        radial = np.hypot(along, across)
        if self.harmonics:
            phi = np.arctan2(across, along)
            rho = np.ones_like(radial)
            for k, amplitude, phase in self.harmonics:
                rho += amplitude * np.cos(k * phi + phase)
            radial /= rho
        mask = radial <= 1.0
        rows, cols = np.nonzero(mask)
        if rows.size == 0:
            return None
        box = (x0 + int(cols.min()), y0 + int(rows.min()), x0 + int(cols.max()) + 1, y0 + int(rows.max()) + 1)
        return BlobRaster((slice(y0, y1), slice(x0, x1)), mask, radial, along, across, box)


@dataclass(frozen=True)
class Look:
    """How an object is painted inside its mask.

    * ``smooth``  — ``colour``
    * ``mottled`` — ``colour · (1 + amount·n)`` with ``n`` unit smooth noise
    * ``ring``    — ``accent`` where ``radial > ring``, ``colour`` inside (a rim or wall)
    * ``core``    — ``accent`` where ``radial < core``, ``colour`` around it (a centre)
    * ``striped`` — ``colour · (1 + amount·sin(2π·2.5·along))`` (bands across the major axis)
    * ``glossy``  — ``colour · (1.15 - 0.4·radial²)`` (a dome) and an ``accent`` highlight spot
    * ``soft``    — ``colour`` blended with ``α = 0.45 + 0.55·clip(2.5·(1-radial), 0, 1)`` (fluffy edge)

    ``below`` multiplies a band under the object (an ultrasound shadow < 1 or enhancement > 1).
    """

    colour: RGB
    texture: Texture = "smooth"
    accent: RGB | None = None
    amount: float = 0.3
    ring: float = 0.6
    core: float = 0.45
    below: float | None = None


def paint(image: np.ndarray, raster: BlobRaster, look: Look, noise: np.ndarray) -> None:
    """Paint ``raster`` with ``look`` into the planar ``image`` in place (``noise``: unit smooth noise)."""
    rows, cols = raster.window
    image, noise, mask = image[:, rows, cols], noise[rows, cols], raster.mask
    colour = planes(look.colour)
    texture = look.texture
    if texture == "smooth":
        blend(image, mask, colour)
    elif texture == "mottled":
        blend(image, mask, colour * (1 + look.amount * noise))
    elif texture == "striped":
        blend(image, mask, colour * (1 + look.amount * np.sin(2 * math.pi * 2.5 * raster.along)))
    elif texture == "ring":
        blend(image, mask, colour)
        blend(image, mask & (raster.radial > look.ring), _accent(look))
    elif texture == "core":
        blend(image, mask, colour)
        blend(image, mask & (raster.radial < look.core), _accent(look))
    elif texture == "glossy":
        blend(image, mask, colour * (1.15 - 0.4 * raster.radial**2))
        spot = mask & (np.hypot(raster.along + 0.35, raster.across + 0.35) < 0.25)
        blend(image, spot, _accent(look))
    elif texture == "soft":
        blend(image, mask, colour, 0.45 + 0.55 * np.clip(2.5 * (1 - raster.radial), 0, 1))
    else:
        raise ValueError(f"unknown texture {texture!r}")


def _accent(look: Look) -> RGB:
    if look.accent is None:
        raise ValueError(f"texture {look.texture!r} needs an accent colour")
    return look.accent


def band_below(mask: np.ndarray, length: int) -> np.ndarray:
    """The ``length`` pixels under the lowest mask pixel of every column the mask touches."""
    size = mask.shape[0]
    touched = mask.any(axis=0)
    bottom = np.where(touched, size - 1 - np.argmax(mask[::-1], axis=0), -1)
    rows = np.arange(size)[:, None]
    return touched[None, :] & (rows > bottom[None, :]) & (rows <= bottom[None, :] + length)
