"""`fairbench run`'s options derive from RunConfig's fields (issue 26, item 5): each field's type,
default and `fairbench.config.option` metadata make its option, so a new field is one edit."""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field

import fairbench.cli as cli
import pytest
from fairbench.config import NOT_RUN_OPTIONS, PRESETS, RunConfig, option
from fairbench.specs.threats import subset_aliases

from cli_helpers import cli_out

PROCESS_OPTIONS = {"resume", "stop_after_epoch", "progress"}  # how the process runs, no field
ALIASES = set(subset_aliases())  # a threat's older subset option, hidden (--aa-per-class K: --subset autoattack=K)


def run_params() -> dict[str, typing.Any]:
    return {p.name: p for p in cli._run_click_command().params if p.name != "help"}


def shown_default(f: dataclasses.Field) -> str | None:
    """What `run --help` must give as field ``f``'s default."""
    if f.metadata.get("shown") is not None:
        return f"({f.metadata['shown']})"
    default = f.metadata.get("cli_default") if f.default is dataclasses.MISSING else f.default
    flag = cli.option_name(f).replace("_", "-")
    if isinstance(default, bool):
        return flag if default else f"no-{flag}"
    if isinstance(default, tuple):
        return ",".join(default)
    return None if default is None else str(default)


def help_text(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> str:
    """`fairbench run --help`, box drawing and line breaks taken out (a wrapped help reads on)."""
    monkeypatch.setenv("COLUMNS", "400")
    code, out, _ = cli_out(["run", "--help"], capsys)
    assert code == 0
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", out).split())


def test_every_field_is_a_run_option_with_the_configs_help_or_is_set_otherwise() -> None:
    params = run_params()
    fields = dataclasses.fields(RunConfig)
    assert set(NOT_RUN_OPTIONS) <= {f.name for f in fields} and all(NOT_RUN_OPTIONS.values())
    options = {cli.option_name(f): f for f in fields if f.name not in NOT_RUN_OPTIONS}
    assert set(params) == set(options) | PROCESS_OPTIONS | ALIASES  # nothing declared by hand beside them
    for name, f in options.items():
        p = params[name]
        assert cli.option_help(f) and p.help == cli.option_help(f), name  # the help is the field's
        assert p.opts == ["--" + name.replace("_", "-")], name
        assert bool(p.hidden) == bool(f.metadata.get("hidden")), name
        if typing.get_type_hints(RunConfig)[f.name] in (bool, bool | None):
            assert p.secondary_opts == ["--no-" + name.replace("_", "-")], name
    assert [n for n, p in params.items() if p.hidden] == ["tuning", *sorted(ALIASES)]
    for name in NOT_RUN_OPTIONS:
        assert name not in params


def test_run_help_shows_every_option_with_its_help_and_default(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = help_text(capsys, monkeypatch)
    for f in dataclasses.fields(RunConfig):
        if f.name in NOT_RUN_OPTIONS:
            continue
        flag = "--" + cli.option_name(f).replace("_", "-")
        if f.metadata.get("hidden"):
            assert flag not in text
            continue
        assert f" {flag} " in text, flag
        default = shown_default(f)
        expected = cli.option_help(f) + (f" [default: {default}]" if default is not None else "")
        assert expected in text, (flag, expected)
    assert "[default: 0.1]" in text and "[default: (8/255 CIFAR, 0.1 Fashion-MNIST)]" in text
    assert all(name in text for name in PRESETS)  # --preset's help lists them
    for name in PROCESS_OPTIONS:
        assert f" --{name.replace('_', '-')} " in text


def test_a_preset_setting_yields_to_an_option_given_even_at_the_fields_default() -> None:
    cfg, given = cli.parse_run_args(["--preset", "fmnist-standard"])
    assert (cfg.lr, cfg.device, cfg.subsets, cfg.epochs) == (0.05, "cpu", {"autoattack": 50}, 8) and not given["lr"]
    cfg, given = cli.parse_run_args(
        ["--preset", "fmnist-standard", "--lr", "0.1", "--device", "auto", "--augment", "standard", "--epochs", "100"]
    )
    assert (cfg.lr, cfg.device, cfg.augment, cfg.epochs) == (0.1, "auto", "standard", 100) and given["lr"]
    assert cfg.val_per_class == 500  # the settings not given stay the preset's
    cfg, _ = cli.parse_run_args([])  # no preset: the fields' defaults and the command line's own
    assert cfg == RunConfig(method="pgd-at", arch="preact18", dataset="cifar10")


@dataclass
class WiderConfig(RunConfig):
    """RunConfig with fields added, as a new feature would add them: one edit each."""

    warmup_epochs: int = field(default=0, metadata=option("epochs of linear learning-rate warm-up"))
    nesterov: bool = field(default=False, metadata=option("Nesterov momentum"))
    label_noise: float | None = field(
        default=None, metadata=option("fraction of training labels flipped", shown="none", syntax="fraction")
    )
    probes: tuple[str, ...] = field(default=("clean",), metadata=option("threats probed each epoch"))


@pytest.fixture
def wider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "RunConfig", WiderConfig)
    monkeypatch.setattr(cli.run_cmd, "__signature__", cli.run_signature(WiderConfig))


def test_a_new_config_field_is_a_run_option_at_once(
    wider: None, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, given = cli.parse_run_args(
        [
            "--preset",
            "cpu-fmnist",
            "--warmup-epochs",
            "3",
            "--nesterov",
            "--label-noise",
            "1/10",
            "--probes",
            "clean,pgd20",
        ]
    )
    assert isinstance(cfg, WiderConfig) and given["warmup_epochs"] and given["nesterov"]
    assert (cfg.warmup_epochs, cfg.nesterov, cfg.label_noise, cfg.probes) == (3, True, 0.1, ("clean", "pgd20"))
    assert cfg.arch == "small-cnn" and cfg.epochs == 5  # the preset still applies
    cfg, given = cli.parse_run_args([])
    assert (cfg.warmup_epochs, cfg.nesterov, cfg.label_noise, cfg.probes) == (0, False, None, ("clean",))
    options = cli.run_options()  # what `fairbench sweep` and `tune` pass on by name
    assert options["warmup_epochs"].flag == "--warmup-epochs" and not options["warmup_epochs"].is_flag
    assert options["nesterov"].negative == "--no-nesterov" and options["nesterov"].is_flag
    text = help_text(capsys, monkeypatch)
    assert "--warmup-epochs" in text and "epochs of linear learning-rate warm-up [default: 0]" in text
    assert "Nesterov momentum [default: no-nesterov]" in text
    assert "fraction of training labels flipped [default: (none)]" in text
    assert "threats probed each epoch [default: clean]" in text


def test_a_field_no_option_can_read_must_be_named_as_set_otherwise() -> None:
    @dataclass
    class Unreadable(RunConfig):
        schedule_table: dict[str, float] = field(default_factory=dict, metadata=option("lr per epoch"))

    with pytest.raises(TypeError, match="schedule_table.*NOT_RUN_OPTIONS"):
        cli.run_signature(Unreadable)


def test_a_bad_value_of_a_derived_option_is_one_error_line(capsys: pytest.CaptureFixture) -> None:
    code, _, err = cli_out(["run", "--epochs", "three"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "--epochs" in lines[0]
