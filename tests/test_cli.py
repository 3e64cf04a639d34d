"""`fairbench run` end to end, and every bad input of issue 2: exit 2, one `error:` line, no debris."""

from __future__ import annotations

import json
from pathlib import Path

import fairbench.data.datasets as data
import pytest
import torch
from fairbench.methods.base import EpochContext, Method
from fairbench.methods.pgd_at import PGDAT
from fairbench.runs.folder import load_checkpoint, sha256_file

from cli_helpers import exit_code

TINY = [
    "--arch",
    "small-cnn",
    "--dataset",
    "fashion-mnist",
    "--epochs",
    "1",
    "--batch-size",
    "25",
    "--train-per-class",
    "5",
    "--eval-per-class",
    "2",
    "--attack-steps",
    "1",
    "--device",
    "cpu",
    "--no-progress",
]


cli = exit_code


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def assert_one_error_line(capsys: pytest.CaptureFixture, *fragments: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def no_debian(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    missing = tmp_path / "no-debian-here"
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", missing)
    return missing


# ---------------------------------------------------------------- end to end


def test_run_end_to_end_with_defaults_and_val_split(
    fmnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    seen: list[EpochContext] = []

    def recording_plan(self: Method, ctx: EpochContext):
        seen.append(ctx)
        return Method.plan_epoch(self, ctx)

    monkeypatch.setattr(PGDAT, "plan_epoch", recording_plan)
    out = tmp_path / "results"
    args = [
        "run",
        "--arch",
        "small-cnn",
        "--dataset",
        "fashion-mnist",
        "--epochs",
        "1",
        "--batch-size",
        "40",
        "--train-per-class",
        "8",
        "--val-per-class",
        "4",
        "--eval-per-class",
        "3",
        "--device",
        "cpu",
        "--data-dir",
        str(fmnist_dir),
        "--out",
        str(out),
    ]
    assert cli(args) == 0  # no --method (pgd-at), no --attacks (clean,pgd20,autoattack), a progress bar
    captured = capsys.readouterr()
    assert "epoch 1/1" in captured.err and "img_s" in captured.err and "loss" in captured.err
    assert "shirt" in captured.out and "pgd20" in captured.out  # the per-class table

    (run_dir,) = (out / "runs").iterdir()
    assert run_dir.name.startswith("pgd-at_small-cnn_fashion-mnist_seed0_")
    assert {p.name for p in run_dir.iterdir()} == {
        "config.json",
        "log.jsonl",
        "checkpoint.pt",
        "metrics.json",
        "outcomes.csv.gz",
        "eval_state",
    }

    config = json.loads((run_dir / "config.json").read_text())
    resolved = (config["method"], config["eps"], config["step_size"], config["attack_steps"])
    assert resolved == ("pgd-at", 0.1, 0.025, 10)
    assert config["attacks"] == ["clean", "pgd20", "autoattack"] and config["val_per_class"] == 4
    assert config["run_id"] == run_dir.name and config["params"] == {}

    # --val-per-class: the method sees a balanced validation split, disjoint from training
    (ctx,) = seen
    assert ctx.train.images.dtype == torch.uint8 and ctx.train.images.device == ctx.device
    assert len(ctx.train) == 80 and ctx.val is not None and len(ctx.val) == 40
    assert ctx.val.labels.bincount(minlength=10).tolist() == [4] * 10
    train_imgs = {bytes(img.numpy()) for img in ctx.train.images}
    assert not any(bytes(img.numpy()) in train_imgs for img in ctx.val.images)
    (record,) = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert record["epoch"] == 1 and record["examples"] == 80 and record["images_per_s"] > 0

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["schema_version"] == 1
    assert (metrics["method"], metrics["arch"], metrics["dataset"], metrics["seed"], metrics["epochs"]) == (
        "pgd-at",
        "small-cnn",
        "fashion-mnist",
        0,
        1,
    )
    assert metrics["threat"] == {"norm": "Linf", "eps": 0.1}
    assert set(metrics["metrics"]) == {"clean", "pgd20", "autoattack", "union"}
    for threat in metrics["metrics"].values():
        assert threat["n_per_class"] == [3] * 10
        assert len(threat["per_class"]) == 10 and all(0 <= a <= 1 for a in threat["per_class"])
        assert threat["worst"] == min(threat["per_class"])
        assert threat["worst_class"] == metrics["classes"][threat["per_class"].index(threat["worst"])]
    assert all(
        r <= c for r, c in zip(metrics["metrics"]["pgd20"]["per_class"], metrics["metrics"]["clean"]["per_class"])
    )
    assert metrics["checkpoint"]["sha256"] == sha256_file(run_dir / "checkpoint.pt")
    assert metrics["timing"]["train_s"] > 0 and metrics["env"]["torch"]


def test_attacks_option_selects_threats(fmnist_dir: Path, tmp_path: Path) -> None:
    assert (
        cli(
            ["run", *TINY, "--attacks", "clean", "--data-dir", str(fmnist_dir), "--out", str(tmp_path), "--run-id", "c"]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "runs" / "c" / "metrics.json").read_text())
    assert set(metrics["metrics"]) == {"clean"}


def test_optimizer_and_eval_batch_options_reach_the_run(fmnist_dir: Path, tmp_path: Path) -> None:
    assert (
        cli(
            [
                "run",
                *TINY,
                "--attacks",
                "clean",
                "--momentum",
                "0.5",
                "--weight-decay",
                "0",
                "--eval-batch-size",
                "7",
                "--data-dir",
                str(fmnist_dir),
                "--out",
                str(tmp_path),
                "--run-id",
                "o",
            ]
        )
        == 0
    )
    run_dir = tmp_path / "runs" / "o"
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["momentum"], config["weight_decay"], config["eval_batch_size"]) == (0.5, 0.0, 7)
    (group,) = load_checkpoint(run_dir / "checkpoint.pt")["optimizer"]["param_groups"]
    assert (group["momentum"], group["weight_decay"]) == (0.5, 0.0)


def test_stop_then_resume_through_the_cli(fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = [
        "run",
        *TINY,
        "--epochs",
        "2",
        "--attacks",
        "clean",
        "--data-dir",
        str(fmnist_dir),
        "--out",
        str(tmp_path),
        "--run-id",
        "r",
    ]
    assert cli([*args, "--stop-after-epoch", "1"]) == 0
    run_dir = tmp_path / "runs" / "r"
    assert "continue with --resume" in capsys.readouterr().out
    assert not (run_dir / "metrics.json").exists()
    assert cli(args) == 2  # the folder holds a run: starting over silently would destroy it
    assert_one_error_line(capsys, "already holds a run", "--resume")
    assert cli([*args, "--resume"]) == 0
    assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == 2
    log = [json.loads(line)["epoch"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert log == [1, 2] and (run_dir / "metrics.json").exists()


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["--method", "nope"], ["unknown method 'nope'", "pgd-at"]),
        (["--arch", "resnet9"], ["unknown architecture 'resnet9'", "preact18", "small-cnn", "wrn-28-10"]),
        (["--dataset", "mnist"], ["unknown dataset 'mnist'", "cifar10", "cifar100", "fashion-mnist"]),
        (["--eps", "0"], ["--eps must be in (0, 1], got 0.0"]),
        (["--eps", "-0.1"], ["--eps must be in (0, 1]"]),
        (["--eps", "1.5"], ["--eps must be in (0, 1], got 1.5"]),
        (["--epochs", "0"], ["--epochs must be >= 1, got 0"]),
        (["--attacks", "clean,fgsm"], ["unknown attack(s) fgsm"]),
        (["--param", "strength"], ["--param expects name=value"]),
        (["--param", "strength=2"], ["unknown parameter 'strength' for method 'pgd-at'"]),
        (["--preset", "huge"], ["unknown preset 'huge'", "cpu-fmnist"]),
        (["--stop-after-epoch", "0"], ["--stop-after-epoch must be >= 1"]),
        (["--schedule", "piecewise:0.8,0.4"], ["--schedule must be piecewise, piecewise:M1,M2,..."]),
        (["--ema", "1.5"], ["--ema must be in (0, 1), got 1.5"]),
        (["--method", "cfa", "--param", "lambda1=-1", "--val-per-class", "2"], ["cfa: lambda1 must be >= 0"]),
        (["--method", "cfa", "--param", "delta=2", "--val-per-class", "2"], ["cfa: delta must be in [0, 1]"]),
        (["--method", "faal", "--init-from", "x", "--param", "r=0"], ["faal: r must be > 0"]),
    ],
)
def test_bad_values_fail_before_any_work(
    extra: list[str], fragments: list[str], fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "results"
    assert cli(["run", *TINY, "--data-dir", str(fmnist_dir), "--out", str(out), *extra]) == 2
    assert_one_error_line(capsys, *fragments)
    assert not out.exists()


def test_missing_data_offline(tmp_path: Path, no_debian: Path, capsys: pytest.CaptureFixture) -> None:
    empty, out = tmp_path / "empty", tmp_path / "results"
    empty.mkdir()
    assert cli(["run", *TINY, "--no-download", "--data-dir", str(empty), "--out", str(out)]) == 2
    assert_one_error_line(
        capsys,
        "fashion-mnist not found",
        str(empty),
        str(no_debian),
        "apt-get install dataset-fashion-mnist",
        "network access",
    )
    assert files_under(out) == []


def test_defaults_are_cifar10_and_preact18(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "results"
    args = ["run", "--no-download", "--data-dir", str(tmp_path), "--out", str(out), "--device", "cpu"]
    assert cli(args) == 2
    assert_one_error_line(capsys, "cifar10 not found", str(tmp_path / "cifar-10-batches-py"))
    assert files_under(out) == []


def test_unwritable_output_folder(fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # fails for root too, unlike a read-only folder
    assert cli(["run", *TINY, "--data-dir", str(fmnist_dir), "--out", str(blocker / "results")]) == 2
    assert_one_error_line(capsys, "cannot write to output folder", str(blocker / "results"))
    assert blocker.read_text() == "not a folder"


def test_resume_without_checkpoint(fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "results"
    assert cli(["run", *TINY, "--data-dir", str(fmnist_dir), "--out", str(out), "--run-id", "x", "--resume"]) == 2
    assert_one_error_line(capsys, "--resume: no checkpoint in", str(out / "runs" / "x"))
    assert files_under(out) == []


def test_resume_with_a_checkpoint_of_another_arch(
    fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "results"
    common = ["run", *TINY, "--epochs", "2", "--data-dir", str(fmnist_dir), "--out", str(out), "--run-id", "r"]
    assert cli([*common, "--stop-after-epoch", "1"]) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in files_under(out)}
    assert cli([*common, "--arch", "preact18", "--resume"]) == 2
    assert_one_error_line(capsys, "different config", "arch ('small-cnn' in the checkpoint, 'preact18' now)")
    assert {p: p.read_bytes() for p in files_under(out)} == before  # config.json etc. untouched


def test_sync_bn_is_recorded_with_the_batch_norm_batch(fmnist_dir: Path, tmp_path: Path) -> None:
    """--sync-bn reaches the config and metrics.json records it with the world size and the number
    of images each batch norm normalises over (one process here: the whole batch either way)."""
    for flag, run_id in (("--sync-bn", "s"), ("--no-sync-bn", "p")):
        assert (
            cli(
                [
                    "run",
                    *TINY,
                    "--attacks",
                    "clean",
                    flag,
                    "--data-dir",
                    str(fmnist_dir),
                    "--out",
                    str(tmp_path),
                    "--run-id",
                    run_id,
                ]
            )
            == 0
        )
        metrics = json.loads((tmp_path / "runs" / run_id / "metrics.json").read_text())
        training = metrics["training"]
        assert (training["sync_bn"], training["world_size"], training["bn_batch"]) == (flag == "--sync-bn", 1, 25)
        assert training["amp"] is False  # bf16 autocast: on CUDA with native bf16 only
        assert metrics["env"]["eval_backend"] == {"cudnn_benchmark": False, "tf32": False}
    assert json.loads((tmp_path / "runs" / "s" / "config.json").read_text())["sync_bn"] is True


# ---------------------------------------------------------------- paper presets


@pytest.fixture
def captured_run(monkeypatch: pytest.MonkeyPatch) -> list:
    """The RunConfig each `fairbench run` would train (nothing is trained)."""
    import fairbench.train.runner

    seen: list = []
    monkeypatch.setattr(fairbench.train.runner, "run", lambda cfg, **kwargs: seen.append(cfg))
    return seen


@pytest.mark.parametrize(
    "preset, method, fields",
    [
        ("cfa-cifar10", "cfa", {"epochs": 200, "schedule": "piecewise", "val_per_class": 100}),
        (
            "wat-cifar10",
            "wat",
            {
                "epochs": 100,
                "schedule": "piecewise:0.74,0.89",
                "weight_decay": 2e-4,
                "val_per_class": 300,
                "eps": 0.031,
                "step_size": 0.007,
            },
        ),
        (
            "bat-cifar10",
            "bat",
            {
                "epochs": 100,
                "schedule": "piecewise:0.74,0.89,0.99",
                "weight_decay": 2e-4,
                "eps": 0.031,
                "step_size": 0.007,
            },
        ),
        (
            "dafa-cifar10",
            "dafa",
            {"epochs": 110, "schedule": "piecewise:0.9,0.94545", "eps": 0.031, "step_size": 0.007},
        ),
        # FAAL's and CFA's codes use 8/255 and 2/255: the data set's defaults (None until resolved)
        (
            "faal-cifar10",
            "faal",
            {"epochs": 2, "lr": 0.01, "schedule": "piecewise:0.5", "eps": None, "step_size": None},
        ),
    ],
)
def test_paper_presets_set_the_method_and_its_setting(
    preset: str, method: str, fields: dict, captured_run: list
) -> None:
    assert cli(["run", "--preset", preset]) == 0
    (cfg,) = captured_run
    assert (cfg.method, cfg.dataset, cfg.arch) == (method, "cifar10", "preact18")
    assert {k: getattr(cfg, k) for k in fields} == fields
    cfg.validate()


def test_preset_parameters_follow_its_method_and_yield_to_the_options(captured_run: list) -> None:
    assert cli(["run", "--preset", "cfa-cifar10", "--param", "lambda1=0.5", "--epochs", "3"]) == 0
    assert cli(["run", "--preset", "cfa-cifar10", "--method", "pgd-at", "--ema", "0.85"]) == 0
    cfa, pgd_at = captured_run
    assert cfa.params == {"base": "trades", "lambda1": "0.5"} and cfa.epochs == 3
    assert pgd_at.method == "pgd-at" and pgd_at.params == {} and pgd_at.ema == 0.85
    assert pgd_at.val_per_class == 100  # the setting stays, the other method's parameters do not
