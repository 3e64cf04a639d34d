"""Architectures: standard parameter counts, normalization inside, state-dict loading."""

from __future__ import annotations

import pytest
import torch
from fairbench.data.datasets import get_dataset
from fairbench.errors import FairbenchError
from fairbench.models import Normalize, count_parameters, create_model, load_model_state

# Parameter counts for 10 classes, inputs 3×32×32, of the standard definitions:
# WRN-28-10 and WRN-34-10 as in Zagoruyko & Komodakis / TRADES (36,479,194 and 46,160,474);
# PreAct ResNet-18 as in kuangliu/pytorch-cifar (11,171,146) plus the final BN before pooling
# that the adversarial-training code bases add (1,024).
STANDARD_COUNTS = {"preact18": 11_172_170, "wrn-28-10": 36_479_194, "wrn-34-10": 46_160_474, "preact18-frl": 11_171_146}


@pytest.mark.parametrize("arch, count", sorted(STANDARD_COUNTS.items()))
def test_parameter_counts_match_the_standard_definitions(arch: str, count: int) -> None:
    model = create_model(arch, get_dataset("cifar10"))
    assert count_parameters(model) == count


def test_small_cnn_is_small_and_adapts_to_the_data_set() -> None:
    fm = create_model("small-cnn", get_dataset("fashion-mnist"))
    c10 = create_model("small-cnn", get_dataset("cifar10"))
    assert 10_000 < count_parameters(fm) < 100_000
    # 3 input channels instead of 1: 2 more 3×3 kernels for each of the 16 first filters
    assert count_parameters(c10) - count_parameters(fm) == 2 * 9 * 16


@pytest.mark.parametrize(
    "arch, dataset, classes",
    [
        ("preact18", "cifar10", 10),
        ("preact18", "cifar100", 100),
        ("small-cnn", "fashion-mnist", 10),
        ("small-cnn", "cifar100", 100),
    ],
)
def test_forward_gives_one_logit_per_class(arch: str, dataset: str, classes: int) -> None:
    spec = get_dataset(dataset)
    model = create_model(arch, spec).eval()
    with torch.no_grad():
        out = model(torch.rand(2, *spec.shape))
    assert out.shape == (2, classes) and torch.isfinite(out).all()


@pytest.mark.parametrize("dataset", ["cifar10", "fashion-mnist"])
def test_normalization_is_the_first_layer(dataset: str) -> None:
    spec = get_dataset(dataset)
    model = create_model("small-cnn", spec).eval()
    norm = model[0]
    assert isinstance(norm, Normalize)
    assert torch.equal(norm.mean.flatten(), torch.tensor(spec.mean))
    assert torch.equal(norm.std.flatten(), torch.tensor(spec.std))
    assert {"0.mean", "0.std"} <= set(model.state_dict())  # saved with the weights
    x = torch.rand(3, *spec.shape)
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), model[1]((x - mean) / std))


def _pair():
    spec = get_dataset("fashion-mnist")
    torch.manual_seed(0)
    source = create_model("small-cnn", spec)
    torch.manual_seed(1)
    target = create_model("small-cnn", spec)
    return source, target


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: s,
        lambda s: {f"module.{k}": v for k, v in s.items()},  # saved from DistributedDataParallel
        lambda s: {f"_orig_mod.{k}": v for k, v in s.items()},  # saved from torch.compile
        lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}},
        lambda s: {"model": s, "epoch": 3},
    ],
)
def test_load_model_state_accepts_common_wrappers(wrap) -> None:
    source, target = _pair()
    assert not _same(source, target)
    load_model_state(target, wrap(source.state_dict()), "ckpt.pt")
    assert _same(source, target)


def test_load_model_state_reports_shape_mismatches() -> None:
    source = create_model("small-cnn", get_dataset("cifar100"))
    target = create_model("small-cnn", get_dataset("cifar10"))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(FairbenchError) as exc:
        load_model_state(target, source.state_dict(), "other.pt")
    message = str(exc.value)
    assert message.startswith("other.pt does not fit this architecture")
    assert "2 shape mismatches" in message and "missing" not in message
    assert "1.classifier.2.weight (100, 64) vs (10, 64)" in message
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # untouched


def test_load_model_state_reports_missing_and_unexpected_keys() -> None:
    source, target = _pair()
    state = source.state_dict()
    state.pop("1.classifier.2.bias")
    state["1.extra.weight"] = torch.zeros(1)
    with pytest.raises(
        FairbenchError,
        match=r"1 missing keys \(e.g. 1.classifier.2.bias\).*"
        r"1 unexpected keys \(e.g. 1.extra.weight\)",
    ):
        load_model_state(target, state, "x.pt")


# ---------------------------------------------------------------- FRL's checkpoints


class AuthorsBlock(torch.nn.Module):
    """A pre-activation block with the module names of FRL's pre_resnet.py (kuangliu's layout)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        nn = torch.nn
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        skip = self.shortcut(out) if hasattr(self, "shortcut") else x
        return self.conv2(torch.relu(self.bn2(self.conv1(out)))) + skip


class AuthorsPreActResNet18(torch.nn.Module):
    """FRL's network as its code defines it: raw [0, 1] inputs, no BN+ReLU before the pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        widths, cin = (64, 128, 256, 512), 64
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(
                self,
                f"layer{i + 1}",
                torch.nn.Sequential(AuthorsBlock(cin, width, stride), AuthorsBlock(width, width, 1)),
            )
            cin = width
        self.linear = torch.nn.Linear(512, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        return self.linear(torch.nn.functional.avg_pool2d(out, 4).flatten(1))


def authors_checkpoint() -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    net = AuthorsPreActResNet18()
    net.train()
    with torch.no_grad():
        net(torch.rand(16, 3, 32, 32))  # batch-norm running statistics that are not the defaults
    return net.eval(), net.state_dict()


def test_frl_authors_checkpoint_loads_into_preact18_frl_and_computes_the_same_function() -> None:
    authors, state = authors_checkpoint()
    model = create_model("preact18-frl", get_dataset("cifar10")).eval()
    load_model_state(model, state, "hot_start.pt")
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), authors(x), atol=1e-5)
    assert torch.equal(model[0].mean.flatten(), torch.zeros(3)) and torch.equal(model[0].std.flatten(), torch.ones(3))


@pytest.mark.parametrize("arch", ["preact18", "wrn-28-10"])
def test_frl_authors_checkpoint_into_another_architecture_is_one_clear_error(arch: str) -> None:
    _, state = authors_checkpoint()
    with pytest.raises(FairbenchError, match=r"layout of FRL's code .* --arch preact18-frl"):
        load_model_state(create_model(arch, get_dataset("cifar10")), {"state_dict": state}, "hot_start.pt")
