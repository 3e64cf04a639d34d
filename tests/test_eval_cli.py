"""`fairbench eval`: any state_dict or a RobustBench zoo model, per class, into metrics.json."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fairbench.cli import main
from fairbench.data.datasets import CIFAR10_CLASSES, get_dataset
from fairbench.models import create_model
from fairbench.runs.folder import sha256_file
from fairbench.schema import read_metrics

from cli_helpers import cli_out


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


cli = cli_out


def small_cnn_checkpoint(path: Path) -> Path:
    """A small-cnn state_dict saved the way DDP training scripts often do: wrapped, `module.`-prefixed."""
    torch.manual_seed(0)
    model = create_model("small-cnn", get_dataset("fashion-mnist"))
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, path)
    return path


def test_eval_checkpoint_writes_metrics_and_resumes(fmnist_dir: Path, tmp_path: Path, capsys) -> None:
    ckpt = small_cnn_checkpoint(tmp_path / "ck.pt")
    args = [
        "eval",
        "--checkpoint",
        str(ckpt),
        "--arch",
        "small-cnn",
        "--dataset",
        "fashion-mnist",
        "--attacks",
        "clean,pgd20",
        "--n-per-class",
        "2",
        "--data-dir",
        str(fmnist_dir),
        "--out",
        str(tmp_path / "results"),
        "--device",
        "cpu",
        "--batch-size",
        "7",
    ]
    code, out, err = cli(args, capsys)
    assert code == 0, err
    [path] = list((tmp_path / "results" / "runs").glob("*/metrics.json"))
    data = read_metrics(path).to_json()
    assert data["schema_version"] == 1 and data["method"] == "external" and data["arch"] == "small-cnn"
    assert set(data["metrics"]) == {"clean", "pgd20", "union"}
    assert data["metrics"]["clean"]["n_per_class"] == [2] * 10
    assert data["epochs"] is None and data["training"] == {
        "epochs": None,
        "train_per_class": None,
        "eval_per_class": 2,
    }  # not trained here
    assert (path.parent / "outcomes.csv.gz").is_file()
    assert data["threat"] == {"norm": "Linf", "eps": 0.1}
    assert data["attack_settings"]["pgd20"]["steps"] == 20
    assert set(data["timing"]["eval_s"]) == {"clean", "pgd20"}
    assert data["checkpoint"] == {"file": "ck.pt", "sha256": sha256_file(ckpt)}
    assert "union" in out and "worst class" in out and path.parent.name in out
    code, out, _ = cli(args, capsys)  # a second run reuses every saved outcome
    assert code == 0 and "pgd20: resuming after 20/20 examples" in out
    assert json.loads(path.read_text())["metrics"] == data["metrics"]


def test_checkpoint_for_another_architecture_is_one_error(fmnist_dir: Path, tmp_path: Path, capsys) -> None:
    ckpt = small_cnn_checkpoint(tmp_path / "ck.pt")
    code, out, err = cli(
        [
            "eval",
            "--checkpoint",
            str(ckpt),
            "--arch",
            "preact18",
            "--dataset",
            "fashion-mnist",
            "--data-dir",
            str(fmnist_dir),
            "--out",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 2
    [line] = err.strip().splitlines()
    assert line.startswith("error: ") and "does not fit this architecture" in line and "missing keys" in line


def test_malicious_pickle_is_refused(fmnist_dir: Path, tmp_path: Path, capsys) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"state_dict": Evil()}, tmp_path / "evil.pt")
    code, _, err = cli(
        [
            "eval",
            "--checkpoint",
            str(tmp_path / "evil.pt"),
            "--arch",
            "small-cnn",
            "--dataset",
            "fashion-mnist",
            "--data-dir",
            str(fmnist_dir),
            "--out",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 2 and not marker.exists()
    [line] = err.strip().splitlines()
    assert line.startswith("error: cannot load checkpoint") and "weights_only" in line


@pytest.mark.parametrize(
    "args, message",
    [
        (["--arch", "small-cnn"], "exactly one of --checkpoint"),
        (["--checkpoint", "x.pt"], "--checkpoint needs --arch"),
        (["--checkpoint", "x.pt", "--arch", "small-cnn", "--attacks", "clean,fgsm"], "unknown attack(s) fgsm"),
        (["--checkpoint", "x.pt", "--arch", "small-cnn", "--n-per-class", "0"], "--eval-per-class must be >= 1"),
        (["--robustbench", "Wong2020Fast", "--threat-model", "L2"], "fairbench evaluates L-inf only"),
        (["--robustbench", "Wong2020Fsat"], "did you mean Wong2020Fast"),
    ],
)
def test_bad_options_are_one_error(args: list[str], message: str, tmp_path: Path, capsys) -> None:
    code, _, err = cli(["eval", "--out", str(tmp_path), *args], capsys)
    assert code == 2 and err.count("\n") == 1 and message in err, err


# ---------------------------------------------------------------- RobustBench (no download)


def write_cifar10_test(root: Path, per_class: int) -> Path:
    """CIFAR-10's test batch and meta file in their real (pickled) format, random pixels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), per_class)
    batch = {
        "batch_label": "testing batch 1 of 1",
        "labels": labels.tolist(),
        "data": rng.integers(0, 256, size=(len(labels), 3 * 32 * 32), dtype=np.uint8),
    }
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list(CIFAR10_CLASSES)}))
    return root


def test_robustbench_zoo_model_per_class(tmp_path: Path, capsys, monkeypatch) -> None:
    import pyautoattack
    import torchvision.datasets.cifar
    from fairbench.eval.zoo import import_robustbench

    # the written files are not CIFAR-10's, so their md5 differs: accept them
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.delitem(sys.modules, "autoattack", raising=False)
    monkeypatch.delitem(sys.modules, "autoattack.state", raising=False)
    _, zoo = import_robustbench()
    assert sys.modules["autoattack"] is pyautoattack, "the bridge maps autoattack to pyautoattack"
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    torch.manual_seed(0)
    net = zoo[BenchmarkDataset("cifar10")][ThreatModel("Linf")]["Wong2020Fast"]["model"]()
    model_dir = tmp_path / "models"
    (model_dir / "cifar10" / "Linf").mkdir(parents=True)
    torch.save(net.state_dict(), model_dir / "cifar10" / "Linf" / "Wong2020Fast.pt")
    data_dir = write_cifar10_test(tmp_path / "data", per_class=1)
    code, out, err = cli(
        [
            "eval",
            "--robustbench",
            "Wong2020Fast",
            "--model-dir",
            str(model_dir),
            "--data-dir",
            str(data_dir),
            "--attacks",
            "clean,pgd20",
            "--n-per-class",
            "1",
            "--out",
            str(tmp_path / "results"),
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0, err
    [path] = list((tmp_path / "results" / "runs").glob("*/metrics.json"))
    data = read_metrics(path).to_json()
    assert data["method"] == "robustbench:Wong2020Fast" and data["dataset"] == "cifar10"
    assert data["params"]["threat_model"] == "Linf"
    assert data["threat"]["eps"] == pytest.approx(8 / 255)
    assert data["metrics"]["pgd20"]["n_per_class"] == [1] * 10
    assert data["checkpoint"]["file"] == "Wong2020Fast.pt"
    assert "airplane" in out


def test_robustbench_malicious_file_is_refused(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    folder = tmp_path / "models" / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    torch.save({"state_dict": Evil()}, folder / "Wong2020Fast.pt")
    code, _, err = cli(
        ["eval", "--robustbench", "Wong2020Fast", "--model-dir", str(tmp_path / "models"), "--out", str(tmp_path)],
        capsys,
    )
    assert code == 2 and not marker.exists() and "weights_only" in err


def test_run_resumes_a_killed_evaluation(fmnist_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """`fairbench run --resume` after training finished but evaluation was killed: only the rest runs."""
    import fairbench.eval.threats as threats

    class Killed(Exception):
        pass

    def killed(*args, **kwargs):
        raise Killed

    args = [
        "run",
        "--method",
        "pgd-at",
        "--arch",
        "small-cnn",
        "--dataset",
        "fashion-mnist",
        "--epochs",
        "1",
        "--batch-size",
        "50",
        "--data-dir",
        str(fmnist_dir),
        "--out",
        str(tmp_path),
        "--run-id",
        "r",
        "--no-progress",
        "--device",
        "cpu",
        "--attacks",
        "clean,pgd20",
        "--eval-per-class",
        "3",
    ]
    monkeypatch.setattr(threats, "pgd_correct", killed)
    with pytest.raises(Killed):
        main(args)
    monkeypatch.undo()
    calls: list[int] = []
    real_clean = threats.clean_correct
    monkeypatch.setattr(threats, "clean_correct", lambda *a: calls.append(1) or real_clean(*a))
    code, out, err = cli(args + ["--resume"], capsys)
    assert code == 0, err
    assert "clean: resuming after 30/30 examples" in out
    data = read_metrics(tmp_path / "runs" / "r" / "metrics.json").to_json()
    assert set(data["metrics"]) == {"clean", "pgd20", "union"}
    assert data["attack_settings"]["pgd20"]["seed"] == 0
    # one batch of 30: clean_correct ran once, inside PGD-20; the saved clean stage was reused
    assert len(calls) == 1
    # the saved outcomes name the evaluated images by their positions in the full test set
    from fairbench.data.datasets import load_split, per_class_indices
    from fairbench.runs.folder import load_checkpoint

    labels = load_split(get_dataset("fashion-mnist"), "test", fmnist_dir, download=False).labels
    expected = per_class_indices(labels, 3, 10)
    assert not torch.equal(expected, torch.arange(30))  # else this check would prove nothing
    for threat in ("clean", "pgd20"):
        saved = load_checkpoint(tmp_path / "runs" / "r" / "eval_state" / f"{threat}.pt")
        assert torch.equal(saved["indices"], expected), threat


def test_a_killed_re_evaluation_leaves_no_stale_result(fmnist_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """Evaluating the same checkpoint again with other settings writes to the same folder: while it
    runs (and if it is killed) the earlier metrics.json must not be there to look current."""
    import fairbench.eval.threats as threats

    ckpt = small_cnn_checkpoint(tmp_path / "ck.pt")
    args = [
        "eval",
        "--checkpoint",
        str(ckpt),
        "--arch",
        "small-cnn",
        "--dataset",
        "fashion-mnist",
        "--attacks",
        "clean,pgd20",
        "--n-per-class",
        "2",
        "--data-dir",
        str(fmnist_dir),
        "--out",
        str(tmp_path / "results"),
        "--device",
        "cpu",
    ]
    assert cli(args, capsys)[0] == 0
    [path] = list((tmp_path / "results" / "runs").glob("*/metrics.json"))

    class Killed(Exception):
        pass

    def killed(*a, **k):
        raise Killed

    monkeypatch.setattr(threats, "pgd_correct", killed)
    with pytest.raises(Killed):
        main(args + ["--eps", "0.2"])
    assert not path.exists()
