"""Generated segmentation data: striped shapes on a smooth background, per-pixel labels.

No real segmentation dataset is available offline, so the benchmark draws its own. Shapes are
brighter than the background on average (overlapping ranges) and carry a stripe texture, so
finding them is easy and learnt first; the three shape classes share one intensity and
texture distribution and differ only by their outline: round, four straight edges, three
straight edges (harder, learnt later). Pixel noise covers everything; later shapes are painted over
earlier ones, so masks include occlusion. Everything is a function of the seed.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

CLASSES = ("background", "disc", "rectangle", "triangle")
NUM_CLASSES = len(CLASSES)


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return torch.empty(n).uniform_(low, high, generator=gen)


def _stripes(n: int, xx: torch.Tensor, yy: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random level plus a random-direction sinusoidal texture per image: (n, size, size)."""
    level = _uniform(n, -0.2, 1.0, gen)[:, None, None]
    amp = _uniform(n, 0.3, 0.8, gen)[:, None, None]
    freq = 2 * math.pi * _uniform(n, 3.0, 7.0, gen)[:, None, None]  # 3-7 periods per image
    angle = _uniform(n, 0.0, math.pi, gen)[:, None, None]
    phase = _uniform(n, 0.0, 2 * math.pi, gen)[:, None, None]
    along = xx * torch.cos(angle) + yy * torch.sin(angle)
    return level + amp * torch.sin(freq * along + phase)


def _shape_masks(n: int, xx: torch.Tensor, yy: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Boolean masks (3, n, size, size): a disc, a rectangle and a triangle per image.

    All three are drawn at one random pose; the caller keeps one per image by class.
    """
    cx = _uniform(n, 0.2, 0.8, gen)[:, None, None]
    cy = _uniform(n, 0.2, 0.8, gen)[:, None, None]
    radius = _uniform(n, 0.15, 0.3, gen)[:, None, None]
    angle = _uniform(n, 0.0, 2 * math.pi, gen)[:, None, None]
    dx, dy = xx - cx, yy - cy
    disc = dx**2 + dy**2 < radius**2
    u = dx * torch.cos(angle) + dy * torch.sin(angle)
    v = -dx * torch.sin(angle) + dy * torch.cos(angle)
    half_w = radius * _uniform(n, 0.7, 1.0, gen)[:, None, None]
    half_h = radius * _uniform(n, 0.35, 0.8, gen)[:, None, None]
    rectangle = (u.abs() < half_w) & (v.abs() < half_h)
    # Equilateral triangle with circumradius `radius`: inside all three edges at distance r/2.
    triangle = torch.ones_like(disc)
    for j in range(3):
        phi = angle + 2 * math.pi * j / 3
        triangle &= dx * torch.cos(phi) + dy * torch.sin(phi) < radius / 2
    return torch.stack([disc, rectangle, triangle])


@functools.lru_cache(maxsize=4)
def generate_shapes(
    n: int, seed: int, size: int = 32, max_shapes: int = 3, noise_std: float = 0.25
) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` images (n, 1, size, size) float and masks (n, size, size) int64 in [0, NUM_CLASSES).

    Each image holds 1..max_shapes shapes of random class, pose and texture. Cached per
    process; callers must not modify the returned tensors in place.
    """
    gen = torch.Generator().manual_seed(seed)
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    # A smooth random field, so the background is not flat either.
    blobs = F.interpolate(
        torch.randn(n, 1, 4, 4, generator=gen),
        size=(size, size),
        mode="bicubic",
        align_corners=False,
    )[:, 0]
    image = _uniform(n, -1.0, 0.2, gen)[:, None, None] + 0.3 * blobs
    mask = torch.zeros(n, size, size, dtype=torch.long)
    count = torch.randint(1, max_shapes + 1, (n,), generator=gen)
    rows = torch.arange(n)
    for slot in range(max_shapes):
        cls = torch.randint(1, NUM_CLASSES, (n,), generator=gen)
        shapes = _shape_masks(n, xx, yy, gen)[cls - 1, rows]
        paint = shapes & (slot < count)[:, None, None]
        image = torch.where(paint, _stripes(n, xx, yy, gen), image)
        mask = torch.where(paint, cls[:, None, None], mask)
    image = image + noise_std * torch.randn(image.shape, generator=gen)
    return image.unsqueeze(1), mask
