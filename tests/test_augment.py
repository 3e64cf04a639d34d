"""fairbench/data/augment.py: batched per-example augmentation on float images in [0, 1]."""

from __future__ import annotations

import math

import pytest
import torch
from fairbench.data import augment as A
from fairbench.errors import FairbenchError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("policy", list(A.POLICIES))
@pytest.mark.parametrize("channels, side", [(1, 28), (3, 32)])
def test_policies_keep_shape_and_range_and_change_every_image(policy: str, channels: int, side: int) -> None:
    x = torch.rand(256, channels, side, side, generator=gen(1))
    out = A.POLICIES[policy](x, generator=gen(2))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert ((out - x).abs().flatten(1).amax(1) > 0).all()


def test_every_single_randaugment_op_changes_the_image() -> None:
    x = torch.rand(1024, 3, 32, 32, generator=gen(1))
    out = A.randaugment(x, num_ops=1, generator=gen(2))
    assert ((out - x).abs().flatten(1).amax(1) > 0).all()


@pytest.mark.parametrize("policy", list(A.POLICIES))
def test_each_example_draws_its_own_augmentation(policy: str) -> None:
    x = torch.rand(1, 3, 32, 32, generator=gen(1)).expand(32, -1, -1, -1).contiguous()
    out = A.POLICIES[policy](x, generator=gen(2)).flatten(1)
    distinct = torch.unique(out, dim=0).shape[0]
    assert distinct >= 28  # a few draws may coincide (the same op at nearly the same magnitude)


def test_a_generator_makes_it_reproducible() -> None:
    x = torch.rand(16, 3, 32, 32, generator=gen(1))
    assert torch.equal(A.randaugment(x, generator=gen(5)), A.randaugment(x, generator=gen(5)))
    assert not torch.equal(A.randaugment(x, generator=gen(5)), A.randaugment(x, generator=gen(6)))


def test_affine_identity_rotation_and_translation_are_exact() -> None:
    x = torch.rand(4, 3, 32, 32, generator=gen(1))
    assert torch.allclose(A.affine(x, A.identity_theta(4, x)), x, atol=1e-6)
    quarter = A.affine(x, A.rotation_theta(torch.full((4,), math.pi / 2)))
    assert torch.allclose(quarter, torch.rot90(x, 1, (2, 3)), atol=1e-5)
    theta = A.identity_theta(4, x)
    theta[:, 0, 2] = 2 * 3 / 32  # sample 3 pixels to the right: the image moves 3 pixels left
    shifted = A.affine(x, theta)
    assert torch.allclose(shifted[..., :-3], x[..., 3:], atol=1e-5)
    assert (shifted[..., -3:] == 0).all()


def test_colour_ops() -> None:
    x = torch.rand(8, 3, 32, 32, generator=gen(1))
    levels = A.posterize(x, torch.full((8,), 4)) * 255
    assert torch.allclose(levels, torch.round(levels / 16) * 16, atol=1e-3)
    t = torch.full((8,), 0.7)
    sol = A.solarize(x, t)
    assert torch.equal(sol, torch.where(x >= 0.7, 1 - x, x))
    assert torch.allclose(A.brightness(x, torch.full((8,), 0.5)), x * 0.5)
    flat = A.contrast(x, torch.zeros(8))
    assert torch.allclose(flat, x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x))


def test_cutout_fills_one_square_of_the_asked_side() -> None:
    x = torch.zeros(64, 1, 32, 32)
    out = A.cutout(x, torch.full((64,), 0.25), generator=gen(3))
    filled = (out == A.CUTOUT_FILL).flatten(1).sum(1)
    assert (filled <= 64).all() and (filled > 0).all() and (filled == 64).any()


def test_random_erase_probability_and_area() -> None:
    x = torch.full((200, 1, 28, 28), -1.0)  # outside [0, 1] so erased pixels are recognisable
    assert torch.equal(A.random_erase(x, p=0.0, generator=gen(1)), x)
    erased = (A.random_erase(x, p=1.0, generator=gen(1)) >= 0).flatten(1).sum(1).float()
    assert (erased >= 1).all() and (erased <= 28 * 28).all()
    half = (A.random_erase(x, p=0.5, generator=gen(2)) >= 0).flatten(1).any(1).float().mean()
    assert 0.35 < float(half) < 0.65


def test_policy_lookup() -> None:
    assert A.get_policy("auto", 3) is A.randaugment
    assert A.get_policy("auto", 1) is A.affine_erase
    with pytest.raises(FairbenchError, match="unknown augmentation 'mixup'"):
        A.get_policy("mixup", 3)
