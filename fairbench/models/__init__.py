"""Architecture registry: ``create_model(name, spec)`` builds a model for a data set.

Every model takes inputs in [0, 1]; the data set's normalization is the model's first layer
(an identity one for an architecture whose network says ``raw_inputs``, as ``preact18-frl``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from fairbench.errors import FairbenchError
from fairbench.models._registry import MODELS, register_model  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from fairbench.data.datasets import DatasetSpec


class Normalize(nn.Module):
    """(x - mean) / std with per-channel constants kept as buffers (saved with the model)."""

    mean: torch.Tensor  # buffers (register_buffer): annotated, since torch's stubs type them as Tensor | Module
    std: torch.Tensor

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def create_model(name: str, spec: "DatasetSpec") -> nn.Module:
    """Build architecture ``name`` for data set ``spec``: Normalize followed by the network."""
    build = MODELS.get(name)
    net = build(num_classes=spec.num_classes, in_channels=spec.shape[0])
    if getattr(net, "raw_inputs", False):
        return nn.Sequential(Normalize((0.0,) * spec.shape[0], (1.0,) * spec.shape[0]), net)
    return nn.Sequential(Normalize(spec.mean, spec.std), net)


def has_average(state: dict) -> bool:
    """Whether ``state`` is a fairbench checkpoint holding a weight average of at least one epoch."""
    averaged = state.get("averaged")
    if not isinstance(averaged, dict) or not isinstance(averaged.get("weights"), dict):
        return False
    n = averaged.get("n_averaged")
    if isinstance(n, torch.Tensor) and n.numel() == 1 and not n.is_floating_point() and not n.is_complex():
        return int(n) > 0
    return isinstance(n, int) and not isinstance(n, bool) and n > 0


def unwrap_state_dict(state: dict, source: str = "checkpoint") -> dict:
    """Accept ``{'state_dict': ...}`` / ``{'model': ...}`` wrappers and strip DDP/compile prefixes.

    Keys must be strings, and distinct once stripped (``module.a`` and ``a`` both: which one?).
    A fairbench checkpoint with a weight average (``--ema``, CFA's FAWA) gives its averaged weights:
    those are what its run evaluated.
    """
    if has_average(state):
        state = state["averaged"]["weights"]
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    out = {}
    for name, value in state.items():
        if not isinstance(name, str):
            raise FairbenchError(f"{source} is not a state_dict: key {name!r:.40} is not a string")
        original = name
        for prefix in ("module.", "_orig_mod."):
            while name.startswith(prefix):
                name = name[len(prefix) :]
        if name in out:
            raise FairbenchError(f"{source} holds '{name}' twice (as '{original}' too)")
        out[name] = value
    return out


def load_model_state(model: nn.Module, state: dict, source: str) -> None:
    """Load ``state`` into ``model`` or say exactly which keys, values or shapes do not fit.

    Every value must be a dense tensor with data, of the model's kind (floating point for a
    floating-point weight, not complex): `load_state_dict` would raise a traceback on anything
    else, or quietly cast a bool or complex tensor into the weights.
    """
    state = unwrap_state_dict(state, source)
    expected = model.state_dict()
    if is_kuangliu_layout(state):  # FRL's hot_start.pt
        if "1.layer4.1.conv2.weight" not in expected or "1.bn.weight" in expected:
            raise FairbenchError(
                f"{source} is a PreAct ResNet-18 in the layout of FRL's code (no input "
                f"normalization, no batch norm + ReLU before the pooling), not this "
                f"architecture; load it with --arch preact18-frl, which is that network"
            )
        state = from_kuangliu_layout(state, {k[2:]: v for k, v in expected.items() if k.startswith("0.")})
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    problems = {k: _value_problem(state[k], v) for k, v in expected.items() if k in state}
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and not problems[k] and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (checkpoint vs model, e.g. {'; '.join(wrong[:3])})")
        raise FairbenchError(f"{source} does not fit this architecture: {'; '.join(parts)}")
    for name, problem in problems.items():
        if problem:
            raise FairbenchError(f"{source} is not a state_dict of this architecture: '{name}' {problem}")
    model.load_state_dict(state)


def _value_problem(value: object, want: torch.Tensor) -> str | None:
    if not isinstance(value, torch.Tensor):
        return f"is of type {type(value).__name__}, not a tensor"
    if value.is_quantized or value.is_nested or value.layout != torch.strided:
        kind = (
            "quantized"
            if value.is_quantized
            else "nested"
            if value.is_nested
            else str(value.layout).replace("torch.", "")
        )
        return f"is a {kind} tensor, not a dense one"
    if value.is_meta:
        return "is a meta tensor (no data)"
    if value.is_complex() or value.is_floating_point() != want.is_floating_point():
        return f"is {value.dtype}, the model holds {want.dtype}"
    return None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# importing the modules registers the architectures
from fairbench.models import preact_resnet, small_cnn, testbed_cnn, wide_resnet  # noqa: E402,F401
from fairbench.models.preact_resnet import from_kuangliu_layout, is_kuangliu_layout  # noqa: E402
