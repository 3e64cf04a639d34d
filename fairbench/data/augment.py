"""Strong, diversity-increasing augmentation of float batches in [0, 1], per example, on the device.

Used by FairAT to diversify hard examples. Everything is batched tensor ops (masks with
``torch.where``, one ``affine_grid`` + ``grid_sample`` for the geometric ops): no per-image Python,
no host sync, so it runs inside the training step on any device.

Policies (`POLICIES`):

- ``randaugment``: RandAugment-style (Cubuk et al., NeurIPS 2020 workshop / CVPR-W 2020). Each
  example gets ``num_ops`` operations drawn uniformly from `OPS`; each draw has its own random
  magnitude and sign (as in TrivialAugment, Müller & Hutter, ICCV 2021), which adds diversity.
  Magnitude ranges start above zero so that no operation is drawn as a no-op (solarize can still
  leave a dark image unchanged: its threshold is drawn in [0.5, 0.95]).
- ``affine-erase``: a random affine jitter (rotation, scale, translation, shear) of every example,
  then random erasing (Zhong et al., AAAI 2020) with probability 0.5. Meant for grey-scale
  Fashion-MNIST, where colour operations carry little meaning.
- ``affine``: the same affine jitter without erasing: a grey-image policy that leaves no box of
  noise, the mark by which an erased image is told from a plain one (FairAT's tuning space).
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
import torch.nn.functional as F

from fairbench.errors import FairbenchError

OPS = ("brightness", "contrast", "solarize", "posterize", "translate", "rotate", "shear", "cutout")
GEOMETRIC = ("translate", "rotate", "shear")

# Magnitude ranges (low, high); each draw picks a magnitude uniformly in between.
BRIGHTNESS = (0.1, 0.5)  # factor 1 ± m
CONTRAST = (0.1, 0.5)  # factor 1 ± m
SOLARIZE = (0.5, 0.95)  # threshold: pixels above it are inverted
POSTERIZE_BITS = (4, 6)  # bits kept (inclusive)
TRANSLATE = (1 / 32, 1 / 8)  # fraction of the image side
ROTATE_DEG = (5.0, 30.0)
SHEAR = (0.05, 0.3)
CUTOUT = (0.25, 0.5)  # square side as a fraction of the image side
CUTOUT_FILL = 0.5

Generator = torch.Generator | None


def _rand(n: int, x: torch.Tensor, generator: Generator) -> torch.Tensor:
    return torch.rand(n, device=x.device, generator=generator)


def _between(u: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    return bounds[0] + (bounds[1] - bounds[0]) * u


def _sign(n: int, x: torch.Tensor, generator: Generator) -> torch.Tensor:
    return torch.where(_rand(n, x, generator) < 0.5, -1.0, 1.0)


def _bc(v: torch.Tensor) -> torch.Tensor:
    """A per-example vector shaped to broadcast over N×C×H×W."""
    return v.view(-1, 1, 1, 1)


# ---------------------------------------------------------------- single operations (per-example args)


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with black: ``x * factor``."""
    return (x * _bc(factor)).clamp(0, 1)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean grey level: ``mean + factor * (x - mean)``."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (mean + _bc(factor) * (x - mean)).clamp(0, 1)


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Invert the pixels at or above ``threshold``."""
    return torch.where(x >= _bc(threshold), 1 - x, x)


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the top ``bits`` of each 8-bit pixel value."""
    step = _bc(torch.pow(2.0, 8 - bits.float()))
    return torch.floor(torch.round(x * 255) / step) * step / 255


def affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample each image through its 2×3 matrix (normalized coordinates), zeros outside."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def box_mask(
    x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: torch.Tensor, width: torch.Tensor
) -> torch.Tensor:
    """N×1×H×W bool mask of one axis-aligned box per example (pixel units, may cross the border)."""
    h, w = x.shape[-2:]
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    t, lft = top.view(-1, 1, 1), left.view(-1, 1, 1)
    inside = (rows >= t) & (rows < t + height.view(-1, 1, 1)) & (cols >= lft) & (cols < lft + width.view(-1, 1, 1))
    return inside[:, None]


def cutout(x: torch.Tensor, side: torch.Tensor, generator: Generator = None) -> torch.Tensor:
    """Fill a square of ``side`` (fraction of the image) at a random centre with grey."""
    n, h = x.shape[0], x.shape[-2]
    size = torch.clamp(torch.round(side * h), min=1)
    centre_y, centre_x = _rand(n, x, generator) * h, _rand(n, x, generator) * x.shape[-1]
    top, left = torch.floor(centre_y - size / 2), torch.floor(centre_x - size / 2)
    return torch.where(box_mask(x, top, left, size, size), CUTOUT_FILL, x)


# ---------------------------------------------------------------- affine matrices


def rotation_theta(angle_rad: torch.Tensor) -> torch.Tensor:
    cos, sin, zero = torch.cos(angle_rad), torch.sin(angle_rad), torch.zeros_like(angle_rad)
    return torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)


def identity_theta(n: int, x: torch.Tensor) -> torch.Tensor:
    return torch.eye(2, 3, device=x.device).expand(n, 2, 3).clone()


def _geometric_theta(
    op: torch.Tensor, mag: torch.Tensor, sign: torch.Tensor, x: torch.Tensor, generator: Generator
) -> torch.Tensor:
    """Per-example 2×3 matrix for the drawn geometric op (identity for the others)."""
    n = x.shape[0]
    theta = identity_theta(n, x)
    along_x = _rand(n, x, generator) < 0.5
    # translate: shift by a fraction f of the side = 2f in normalized coordinates
    shift = 2 * sign * _between(mag, TRANSLATE)
    is_t = op == OPS.index("translate")
    theta[:, 0, 2] = torch.where(is_t & along_x, shift, theta[:, 0, 2])
    theta[:, 1, 2] = torch.where(is_t & ~along_x, shift, theta[:, 1, 2])
    is_r = (op == OPS.index("rotate"))[:, None, None]
    theta = torch.where(is_r, rotation_theta(sign * torch.deg2rad(_between(mag, ROTATE_DEG))), theta)
    shear = sign * _between(mag, SHEAR)
    is_s = op == OPS.index("shear")
    theta[:, 0, 1] = torch.where(is_s & along_x, shear, theta[:, 0, 1])
    theta[:, 1, 0] = torch.where(is_s & ~along_x, shear, theta[:, 1, 0])
    return theta


# ---------------------------------------------------------------- policies


def randaugment(x: torch.Tensor, num_ops: int = 2, generator: Generator = None) -> torch.Tensor:
    """Apply ``num_ops`` operations drawn per example from `OPS`, each with a random magnitude."""
    n = x.shape[0]
    for _ in range(num_ops):
        op = torch.randint(0, len(OPS), (n,), device=x.device, generator=generator)
        mag, sign = _rand(n, x, generator), _sign(n, x, generator)
        candidates = {
            "brightness": lambda v: brightness(v, 1 + sign * _between(mag, BRIGHTNESS)),
            "contrast": lambda v: contrast(v, 1 + sign * _between(mag, CONTRAST)),
            "solarize": lambda v: solarize(v, _between(mag, SOLARIZE)),
            "posterize": lambda v: posterize(v, torch.floor(_between(mag, (POSTERIZE_BITS[0], POSTERIZE_BITS[1] + 1)))),
            "cutout": lambda v: cutout(v, _between(mag, CUTOUT), generator),
        }
        out = x
        for name, fn in candidates.items():
            out = torch.where(_bc(op == OPS.index(name)), fn(x), out)
        theta = _geometric_theta(op, mag, sign, x, generator)
        is_geometric = functools.reduce(torch.logical_or, [op == OPS.index(g) for g in GEOMETRIC])
        x = torch.where(_bc(is_geometric), affine(x, theta), out)
    return x


def affine_erase(x: torch.Tensor, generator: Generator = None, erase_p: float = 0.5) -> torch.Tensor:
    """Random affine jitter of every example, then random erasing with probability ``erase_p``."""
    return random_erase(affine_jitter(x, generator), erase_p, generator)


def affine_jitter(x: torch.Tensor, generator: Generator = None) -> torch.Tensor:
    """Random affine jitter (rotation ±15°, scale 0.9-1.1, shear ±0.15, shift ±10%) of every example."""
    n = x.shape[0]
    u = lambda: _rand(n, x, generator)  # noqa: E731
    angle = torch.deg2rad((u() * 2 - 1) * 15)
    scale = 0.9 + 0.2 * u()
    shear = (u() * 2 - 1) * 0.15
    theta = rotation_theta(angle) / scale[:, None, None]
    theta[:, 0, 1] += shear
    theta[:, :, 2] = (torch.stack([u(), u()], 1) * 2 - 1) * 0.2  # ±10% of the side
    return affine(x, theta)


def random_erase(
    x: torch.Tensor,
    p: float = 0.5,
    generator: Generator = None,
    area: tuple[float, float] = (0.02, 0.33),
    log_ratio: float = math.log(3.3),
) -> torch.Tensor:
    """Random erasing (Zhong et al. 2020): a box of random area/aspect filled with uniform noise."""
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    u = lambda: _rand(n, x, generator)  # noqa: E731
    target = _between(u(), area) * h * w
    ratio = torch.exp((u() * 2 - 1) * log_ratio)
    bh = torch.clamp(torch.round(torch.sqrt(target * ratio)), 1, h)
    bw = torch.clamp(torch.round(torch.sqrt(target / ratio)), 1, w)
    top, left = torch.floor(u() * (h - bh + 1)), torch.floor(u() * (w - bw + 1))
    mask = box_mask(x, top, left, bh, bw) & _bc(u() < p)
    noise = torch.rand(x.shape, device=x.device, generator=generator, dtype=x.dtype)
    return torch.where(mask, noise, x)


Policy = Callable[[torch.Tensor], torch.Tensor]
POLICIES: dict[str, Policy] = {"randaugment": randaugment, "affine-erase": affine_erase, "affine": affine_jitter}


def default_policy(channels: int) -> str:
    """RandAugment-style for colour images (CIFAR), affine jitter + erasing for grey ones."""
    return "randaugment" if channels == 3 else "affine-erase"


def get_policy(name: str, channels: int) -> Policy:
    """The policy called ``name`` (``auto``: `default_policy` for the data set's channels)."""
    if name == "auto":
        name = default_policy(channels)
    if name not in POLICIES:
        raise FairbenchError(f"unknown augmentation '{name}'; valid: auto, {', '.join(POLICIES)}")
    return POLICIES[name]
