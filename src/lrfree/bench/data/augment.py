"""Batch augmentations written with plain tensor ops (torchvision is not available here).

Every function draws its randomness from an explicit `torch.Generator`, so a task that seeds
one generator gets the same augmented batches whatever optimizer it is training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(
    x: torch.Tensor, generator: torch.Generator, pad: int = 2, flip: bool = True
) -> torch.Tensor:
    """Pad by `pad` (replicating the border), take a random same-size crop, flip half the batch."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    if flip:
        flipped = torch.rand(n, generator=generator) < 0.5
        cols = torch.where(flipped[:, None, None, None], cols.flip(-1), cols)
    batch = torch.arange(n)[:, None, None, None]
    chan = torch.arange(x.shape[1])[None, :, None, None]
    return padded[batch, chan, rows, cols]


def random_resized_crop(
    x: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.3, 1.0),
    ratio: tuple[float, float] = (0.75, 4.0 / 3.0),
    flip: bool = True,
) -> torch.Tensor:
    """Crop a random box (area fraction in `scale`, aspect in `ratio`), resize it back, flip.

    One affine grid per sample, so the whole batch is a single `grid_sample` call.
    """
    n = x.shape[0]
    area = torch.empty(n).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(n).uniform_(
        float(torch.tensor(ratio[0]).log()),
        float(torch.tensor(ratio[1]).log()),
        generator=generator,
    )
    aspect = log_ratio.exp()
    # Half-widths in normalised [-1, 1] coordinates, clipped so the box stays inside.
    sx = (area * aspect).sqrt().clamp(max=1.0)
    sy = (area / aspect).sqrt().clamp(max=1.0)
    cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - sx)
    cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - sy)
    if flip:
        sx = torch.where(torch.rand(n, generator=generator) < 0.5, -sx, sx)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx, cx
    theta[:, 1, 1], theta[:, 1, 2] = sy, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def jitter_and_noise(
    x: torch.Tensor,
    generator: torch.Generator,
    strength: float = 0.4,
    noise_std: float = 0.1,
) -> torch.Tensor:
    """Random per-image brightness and contrast changes, then additive Gaussian noise."""
    n = x.shape[0]
    shape = (n,) + (1,) * (x.dim() - 1)
    contrast = 1 + (torch.rand(shape, generator=generator) * 2 - 1) * strength
    brightness = (torch.rand(shape, generator=generator) * 2 - 1) * strength
    mean = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
    out = (x - mean) * contrast + mean + brightness
    return out + noise_std * torch.randn(x.shape, generator=generator)
