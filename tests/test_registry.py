"""Registries: lookup errors, `fairbench list`, and methods from third-party entry points."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from fairbench.data.datasets import get_dataset
from fairbench.errors import FairbenchError
from fairbench.methods import METHODS, register_method
from fairbench.models import MODELS, create_model
from fairbench.registry import Registry
from fairbench.specs.datasets import DATASETS
from fairbench.specs.threats import THREATS

from cli_helpers import cli_out

PLUGIN_MODULE = "fairbench_toy_plugin"


@pytest.mark.parametrize(
    "registry, kind, known",
    [
        (METHODS, "method", "pgd-at"),
        (MODELS, "architecture", "preact18"),
        (DATASETS, "dataset", "fashion-mnist"),
        (THREATS, "threat", "pgd20"),
    ],
)
def test_unknown_name_lists_every_valid_name(registry: Registry, kind: str, known: str) -> None:
    with pytest.raises(FairbenchError) as exc:
        registry.get("no-such-thing")
    message = str(exc.value)
    assert f"unknown {kind} 'no-such-thing'" in message
    assert known in registry.names()
    for name in registry.names():
        assert name in message


def test_lookups_through_the_public_helpers_fail_clearly() -> None:
    with pytest.raises(FairbenchError, match="unknown dataset 'mnist'.*fashion-mnist"):
        get_dataset("mnist")
    with pytest.raises(FairbenchError, match="unknown architecture 'resnet50'.*small-cnn"):
        create_model("resnet50", get_dataset("fashion-mnist"))


def test_builtins_are_registered() -> None:
    assert "pgd-at" in METHODS.names()
    assert {"preact18", "wrn-28-10", "wrn-34-10", "small-cnn"} <= set(MODELS.names())
    assert {"cifar10", "cifar100", "fashion-mnist"} <= set(DATASETS.names())


def test_registering_a_second_object_under_a_taken_name_fails() -> None:
    registry: Registry = Registry("thing")
    registry.register("a")(lambda: 1)
    with pytest.raises(FairbenchError, match="registered twice"):
        registry.register("a")(lambda: 2)


def list_output(capsys: pytest.CaptureFixture) -> list[str]:
    code, out, _ = cli_out(["list"], capsys)
    assert code == 0
    return out.splitlines()


def test_list_shows_each_entry_with_its_summary(capsys: pytest.CaptureFixture) -> None:
    """Each entry's line starts with its name and holds its whole summary (wrapped, never cut)."""
    lines = list_output(capsys)
    text = " ".join(" ".join(lines).split())
    for registry in (METHODS, MODELS, DATASETS, THREATS):
        for entry in registry.entries():
            assert entry.summary, f"{registry.kind} '{entry.name}' has no docstring summary"
            assert any(line.split()[:1] == [entry.name] for line in lines), entry.name
            assert f"{entry.name} {entry.summary}" in text, f"{entry.name}'s summary missing from `fairbench list`"


# ---------------------------------------------------------------- third-party plugin


def write_plugin(site: Path) -> None:
    """A real installed distribution: a module plus its *.dist-info with an entry point."""
    (site / f"{PLUGIN_MODULE}.py").write_text(
        textwrap.dedent('''
        from dataclasses import dataclass

        from fairbench.methods.losses import pgd_at_terms, weighted_mean
        from fairbench.methods.base import Method
        from fairbench.methods import register_method


        @register_method("toy-plugin")
        class ToyPlugin(Method):
            """A third-party test method: PGD-AT scaled by a factor."""

            name = "toy-plugin"

            @dataclass
            class Params:
                scale: float = 0.5
                warmup_epochs: int = 3

            def loss(self, ctx):
                return weighted_mean(pgd_at_terms(ctx), ctx.weight) * self.params.scale
    ''')
    )
    info = site / "fairbench_toy_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fairbench-toy-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[fairbench.methods]\ntoy-plugin = {PLUGIN_MODULE}\n")


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Install the plugin on sys.path and make METHODS load again; restore everything after."""
    METHODS.names()  # load the built-ins into the real registry first, so the copy holds them
    site = tmp_path / "site"
    site.mkdir()
    write_plugin(site)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))
    monkeypatch.setattr(METHODS, "_loaded", False)
    yield site
    sys.modules.pop(PLUGIN_MODULE, None)


def test_entry_point_method_is_found(plugin_site: Path) -> None:
    assert "toy-plugin" in METHODS.names()
    assert "pgd-at" in METHODS.names()
    entry = METHODS.entry("toy-plugin")
    assert entry.obj.__module__ == PLUGIN_MODULE
    assert entry.summary == "A third-party test method: PGD-AT scaled by a factor."
    assert entry.params == {"scale": 0.5, "warmup_epochs": 3}


def test_list_shows_plugin_params_with_defaults(plugin_site: Path, capsys: pytest.CaptureFixture) -> None:
    lines = list_output(capsys)
    at = next(i for i, line in enumerate(lines) if line.split()[:1] == ["toy-plugin"])
    assert "A third-party test method" in lines[at]
    assert "scale=0.5" in lines[at + 1] and "warmup_epochs=3" in lines[at + 1]


def test_plugin_state_does_not_leak() -> None:
    """Runs after the plugin tests (file order): the real registry never saw the plugin."""
    assert "toy-plugin" not in METHODS.names()
    assert PLUGIN_MODULE not in sys.modules


# ---------------------------------------------------------------- the registry names methods


def test_the_registry_sets_a_methods_name_and_checks_its_class(monkeypatch: pytest.MonkeyPatch) -> None:
    from fairbench.methods.base import Method

    METHODS.names()
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))

    class Named(Method):
        """A method without a name line."""

    register_method("named-by-registry")(Named)
    assert Named.name == "named-by-registry" and METHODS.get("named-by-registry") is Named

    class Mismatched(Method):
        """A method that declares another name."""

        name = "something-else"

    with pytest.raises(FairbenchError, match="declares name = 'something-else'"):
        register_method("mismatched")(Mismatched)
    with pytest.raises(FairbenchError, match="not a subclass of fairbench.methods.base.Method"):
        register_method("not-a-method")(lambda: None)
    assert "mismatched" not in METHODS.names() and "not-a-method" not in METHODS.names()
    for name in METHODS.names():  # the built-ins carry their registered names
        assert METHODS.get(name).name == name


# ---------------------------------------------------------------- a third-party architecture

ARCH_MODULE = "fairbench_toy_arch"


def test_entry_point_architecture_is_found_and_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A package adds an architecture through the entry-point group ``fairbench.models``."""
    MODELS.names()  # the built-ins first, so the copy below holds them
    site = tmp_path / "site"
    site.mkdir()
    (site / f"{ARCH_MODULE}.py").write_text(
        textwrap.dedent('''
        from torch import nn

        from fairbench.models import register_model


        @register_model("toy-arch")
        def toy_arch(*, num_classes, in_channels, width=16):
            """A third-party test architecture: one linear layer."""
            return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))
    ''')
    )
    info = site / "fairbench_toy_arch-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fairbench-toy-arch\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[fairbench.models]\ntoy-arch = {ARCH_MODULE}\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(MODELS, "_entries", dict(MODELS._entries))
    monkeypatch.setattr(MODELS, "_loaded", False)
    try:
        assert "toy-arch" in MODELS.names() and "preact18" in MODELS.names()
        assert MODELS.entry("toy-arch").params == {"width": 16}
        model = create_model("toy-arch", get_dataset("fashion-mnist"))
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
        lines = list_output(capsys)
        assert any(line.split()[:1] == ["toy-arch"] and "A third-party test architecture" in line for line in lines)
    finally:
        sys.modules.pop(ARCH_MODULE, None)
