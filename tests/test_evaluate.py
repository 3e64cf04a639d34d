"""The per-class evaluator on real Fashion-MNIST: counts, invariants, attack strength, resume.

AutoAttack is slow on a CPU, so its tests use a small MLP (fast forward passes) on 2-3 test
images per class; the "standard model is not robust" check uses the project's small CNN.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

import fairbench.eval.threats as threats
import pytest
import torch
import torch.nn.functional as F
from fairbench.data.datasets import Split, get_dataset, load_split, per_class_indices
from fairbench.errors import FairbenchError
from fairbench.eval.evaluator import attack_settings, evaluate, evaluate_outcomes, format_table
from fairbench.models import create_model
from fairbench.schema import make_outcomes, metrics_from_outcomes, outcomes_bytes, summarize
from torch import nn

ev = import_module("fairbench.eval.evaluator")  # the evaluator module (`fairbench.evaluate` is the API function)

SPEC = get_dataset("fashion-mnist")
EPS = 8 / 255
ALL = ("clean", "pgd20", "autoattack")


def real_split(name: str, k: int, tmp: Path) -> Split:
    """The first k images per class of the real Fashion-MNIST (Debian's copy; no download)."""
    split = load_split(SPEC, name, tmp, download=False)
    return split.subset(per_class_indices(split.labels, k, SPEC.num_classes))


def train_clean(model: nn.Module, train: Split, steps: int, lr: float) -> nn.Module:
    """A few SGD steps of standard (not adversarial) training, seeded."""
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(steps):
        b = torch.randint(0, len(train), (64,), generator=gen)
        loss = F.cross_entropy(model(train.images[b].float() / 255), train.labels[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread is faster, and on a shared CPU far more predictable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Split]:
    tmp = tmp_path_factory.mktemp("nodata")
    return {
        "train": real_split("train", 200, tmp),
        "test3": real_split("test", 3, tmp),
        "test5": real_split("test", 5, tmp),
    }


@pytest.fixture(scope="module")
def mlp(data: dict[str, Split]) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    return train_clean(model, data["train"], steps=300, lr=0.1)


@pytest.fixture(scope="module")
def reference(mlp: nn.Module, data: dict[str, Split]):
    """One uninterrupted evaluation (no saved state) that the resume tests must reproduce."""
    logs: list[str] = []
    rng = torch.get_rng_state()
    out = evaluate_outcomes(mlp, data["test3"], eps=EPS, attacks=ALL, chunk_size=10, progress=logs.append)
    assert torch.equal(rng, torch.get_rng_state()), "the caller's RNG must be left untouched"
    return out, logs


def test_balanced_subset_has_exactly_k_per_class(data: dict[str, Split], mlp: nn.Module) -> None:
    labels = load_split(SPEC, "test", "/nonexistent", download=False).labels
    idx = per_class_indices(labels, 7, SPEC.num_classes)
    assert torch.bincount(labels[idx], minlength=10).tolist() == [7] * 10
    for c in range(10):  # the first 7 of each class, not the first N images
        assert torch.equal(idx[labels[idx] == c], torch.nonzero(labels == c).flatten()[:7])
    metrics, _, _ = evaluate(mlp, data["test5"], SPEC.classes, eps=EPS, attacks=["clean"], progress=lambda m: None)
    assert metrics["clean"]["n_per_class"] == [5] * 10


def test_counts_weighted_average_and_invariants(reference, data: dict[str, Split]) -> None:
    (correct, seconds), logs = reference
    labels = data["test3"].labels
    assert set(correct) == {"clean", "pgd20", "autoattack", "union"}
    assert set(seconds) == {"clean", "pgd20", "autoattack"}
    for threat in ("pgd20", "autoattack"):
        assert not (correct[threat] & ~correct["clean"]).any(), f"{threat} robust but clean-wrong"
    for threat in ALL:
        assert not (correct["union"] & ~correct[threat]).any(), f"union exceeds {threat}"
    assert torch.equal(correct["union"], correct["pgd20"] & correct["autoattack"])
    for threat, c in correct.items():
        m = summarize(c, labels, SPEC.classes).to_json()
        n, acc = torch.tensor(m["n_per_class"]), torch.tensor(m["per_class"], dtype=torch.float64)
        assert int(n.sum()) == len(labels) == 30
        assert float((acc * n).sum() / n.sum()) == pytest.approx(m["avg"], abs=1e-6)
        assert m["avg"] == pytest.approx(float(c.double().mean()), abs=1e-6)
        assert m["worst"] == min(m["per_class"]) and m["best"] == max(m["per_class"])
        assert m["per_class"][SPEC.classes.index(m["worst_class"])] == m["worst"]
        assert m["per_class_error"] == [pytest.approx(1 - a) for a in m["per_class"]]
        assert m["std"] == pytest.approx(float(acc.std(unbiased=False)), abs=1e-5)
    per_class = {t: summarize(correct[t], labels, SPEC.classes).per_class for t in correct}
    for i in range(10):
        assert per_class["union"][i] <= min(per_class[t][i] for t in ALL)
        assert per_class["autoattack"][i] <= per_class["clean"][i]
    # AutoAttack is the stronger attack in aggregate (not guaranteed per example; see evaluate.py)
    assert correct["autoattack"].sum() <= correct["pgd20"].sum() < correct["clean"].sum()
    assert any("autoattack: initial accuracy" in line for line in logs), "AA's logger is shown"


def test_eps_zero_attacks_change_nothing(mlp: nn.Module, data: dict[str, Split]) -> None:
    calls: list[bool] = []
    hook = mlp.register_forward_pre_hook(lambda module, args: calls.append(module.training))
    mlp.train()
    try:
        split = data["test3"].subset(torch.arange(0, 30, 2))
        correct, _ = evaluate_outcomes(mlp, split, eps=0.0, attacks=ALL, progress=lambda m: None)
    finally:
        hook.remove()
    assert mlp.training, "the model's mode is restored"
    mlp.eval()
    assert calls and not any(calls), "every forward pass ran in eval mode"
    assert correct["clean"].any()
    for threat in ("pgd20", "autoattack", "union"):
        assert torch.equal(correct[threat], correct["clean"])


def test_standard_model_is_not_robust(data: dict[str, Split]) -> None:
    """A model trained without attacks is right on clean images and near 0 under attack.

    eps 0.1 is Fashion-MNIST's standard radius (fairbench's default), its counterpart of 8/255 on
    CIFAR-10; a random-init network would not do here (it predicts one class, "robustly").
    """
    torch.manual_seed(0)
    model = train_clean(create_model("small-cnn", SPEC), data["train"], steps=300, lr=0.05)
    metrics, _, _ = evaluate(model, data["test5"], SPEC.classes, eps=SPEC.eps, attacks=ALL, progress=lambda m: None)
    assert metrics["clean"]["avg"] >= 0.6
    for threat in ("pgd20", "autoattack", "union"):
        assert metrics[threat]["avg"] <= 0.06, threat


class Killed(Exception):
    pass


def _raise(*args, **kwargs):
    raise Killed


def test_killed_after_pgd_resumes_without_pgd(mlp, data, reference, tmp_path, monkeypatch) -> None:
    state_dir = tmp_path / "eval_state"
    monkeypatch.setattr(threats, "autoattack_correct", _raise)
    with pytest.raises(Killed):
        evaluate_outcomes(
            mlp, data["test3"], eps=EPS, attacks=ALL, chunk_size=10, state_dir=state_dir, progress=lambda m: None
        )
    assert {p.name for p in state_dir.iterdir()} == {"clean.pt", "pgd20.pt"}
    monkeypatch.undo()
    monkeypatch.setattr(threats, "pgd_correct", _raise)  # PGD must not run again
    correct, seconds = evaluate_outcomes(
        mlp, data["test3"], eps=EPS, attacks=ALL, chunk_size=10, state_dir=state_dir, progress=lambda m: None
    )
    (expected, _), _ = reference
    for threat in expected:
        assert torch.equal(correct[threat], expected[threat]), threat
    assert seconds["pgd20"] > 0, "the killed run's PGD time is kept"


def test_killed_inside_autoattack_resumes_at_next_chunk(mlp, data, reference, tmp_path, monkeypatch) -> None:
    real = threats.autoattack_correct
    calls: list[int] = []
    kill_at = [2]

    def flaky(*args, **kwargs):
        calls.append(len(args[2]))
        if len(calls) == kill_at[0]:
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(threats, "autoattack_correct", flaky)
    kwargs = dict(eps=EPS, attacks=ALL, chunk_size=10, state_dir=tmp_path / "s", progress=lambda m: None)
    with pytest.raises(Killed):
        evaluate_outcomes(mlp, data["test3"], **kwargs)
    calls.clear()
    kill_at[0] = 0
    monkeypatch.setattr(threats, "pgd_correct", _raise)
    correct, _ = evaluate_outcomes(mlp, data["test3"], **kwargs)
    assert calls == [10, 10], "only the two unfinished chunks of 10 ran again"
    (expected, _), _ = reference
    for threat in expected:
        assert torch.equal(correct[threat], expected[threat]), threat


def test_saved_state_for_other_settings_or_weights_is_not_reused(mlp, data, tmp_path, monkeypatch) -> None:
    split, state_dir = data["test3"], tmp_path / "s"
    calls: list[int] = []
    real = threats.pgd_correct
    monkeypatch.setattr(threats, "pgd_correct", lambda *a, **k: calls.append(1) or real(*a, **k))

    def run(model: nn.Module, eps: float) -> dict[str, torch.Tensor]:
        calls.clear()
        return evaluate_outcomes(
            model, split, eps=eps, attacks=["pgd20"], state_dir=state_dir, progress=lambda m: None
        )[0]

    first = run(mlp, EPS)
    assert calls
    run(mlp, EPS)
    assert not calls, "same model, data and settings: reused"
    run(mlp, 0.05)
    assert calls, "another eps: recomputed"
    other = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    other.load_state_dict(mlp.state_dict())
    with torch.no_grad():
        other[3].bias[0] += 1e-3
    run(other.eval(), EPS)
    assert calls, "other weights: recomputed"
    (state_dir / "pgd20.pt").write_bytes(b"not a checkpoint")
    assert torch.equal(run(mlp, EPS)["pgd20"], first["pgd20"]) and calls, "unreadable: recomputed"


def test_malicious_state_file_is_not_executed(mlp, data, tmp_path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    state_dir = tmp_path / "s"
    state_dir.mkdir()
    torch.save({"format": 1, "payload": Evil()}, state_dir / "clean.pt")
    logs: list[str] = []
    evaluate_outcomes(mlp, data["test3"], eps=EPS, attacks=["clean"], state_dir=state_dir, progress=logs.append)
    assert not marker.exists()
    assert any("ignoring unreadable saved state" in line for line in logs)


def test_unknown_attack_is_one_clear_error(mlp, data) -> None:
    with pytest.raises(FairbenchError, match="unknown attack.*fgsm.*valid: clean, pgd20, autoattack"):
        evaluate(mlp, data["test3"], SPEC.classes, eps=EPS, attacks=["clean", "fgsm"])


def test_settings_and_table() -> None:
    settings = attack_settings(EPS, ALL, seed=3)
    assert settings["pgd20"]["steps"] == 20 and settings["pgd20"]["step_size"] == pytest.approx(EPS / 4)
    assert settings["autoattack"]["version"] == "standard" and settings["autoattack"]["seed"] == 3
    assert settings["autoattack"]["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert settings["union"]["of"] == ["clean", "pgd20", "autoattack"]
    labels = torch.arange(10).repeat(2)
    c = labels != 6
    table = format_table(
        {
            "clean": summarize(c, labels, SPEC.classes).to_json(),
            "union": summarize(c & (labels < 5), labels, SPEC.classes).to_json(),
        },
        SPEC.classes,
    )
    assert "union" in table.splitlines()[0]
    assert [line.split() for line in table.splitlines() if line.startswith("worst class")] == [
        ["worst", "class", "shirt", "sandal"]
    ]


def test_evaluation_runs_without_autotuning_or_tf32_and_restores_the_settings() -> None:
    """On a GPU the trainer turns cuDNN autotuning on and TF32 convolutions are torch's default:
    the evaluator turns both off while it runs (AutoAttack's shapes keep changing; its fp32 must be
    fp32) and gives the trainer's settings back after. The flags can be set on any machine."""
    backends = torch.backends
    seen = []

    class Spy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(
                (backends.cudnn.benchmark, backends.cudnn.conv.fp32_precision, backends.cuda.matmul.fp32_precision)
            )
            return torch.zeros(x.shape[0], 10) + x.flatten(1)[:, :1]

    before = (backends.cudnn.benchmark, backends.cudnn.conv.fp32_precision, backends.cuda.matmul.fp32_precision)
    backends.cudnn.benchmark, backends.cudnn.conv.fp32_precision = True, "tf32"
    backends.cuda.matmul.fp32_precision = "tf32"
    try:
        split = Split(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.arange(4))
        evaluate(Spy(), split, SPEC.classes, eps=EPS, attacks=("clean", "pgd20"), progress=lambda _m: None)
        assert seen and set(seen) == {(False, "ieee", "ieee")}
        assert (backends.cudnn.benchmark, backends.cudnn.conv.fp32_precision, backends.cuda.matmul.fp32_precision) == (
            True,
            "tf32",
            "tf32",
        )
    finally:
        backends.cudnn.benchmark, backends.cudnn.conv.fp32_precision = before[:2]
        backends.cuda.matmul.fp32_precision = before[2]
    assert ev.EVAL_BACKEND == {"cudnn_benchmark": False, "tf32": False}  # what env.eval_backend records


def test_a_threat_on_a_subset_runs_only_there(mlp: nn.Module, data: dict[str, Split], reference) -> None:
    """AutoAttack on a class-balanced subset: -1 elsewhere; union only where every threat ran."""
    split = data["test3"]
    pos = per_class_indices(split.labels, 1, SPEC.num_classes)
    calls: list[int] = []
    real = threats.autoattack_correct

    def counting(*args, **kwargs):
        calls.append(len(args[2]))
        return real(*args, **kwargs)

    ev_aa = threats.autoattack_correct
    threats.autoattack_correct = counting
    try:
        out, _ = evaluate_outcomes(
            mlp, split, eps=EPS, attacks=ALL, chunk_size=10, progress=lambda m: None, subsets={"autoattack": pos}
        )
    finally:
        threats.autoattack_correct = ev_aa
    assert sum(calls) == len(pos), "AutoAttack saw only the subset"
    outside = torch.ones(len(split), dtype=torch.bool)
    outside[pos] = False
    (full, _), _ = reference
    assert torch.equal(out["clean"], full["clean"]) and torch.equal(out["pgd20"], full["pgd20"])
    assert (out["autoattack"][outside] == -1).all() and (out["union"][outside] == -1).all()
    assert set(out["autoattack"][pos].tolist()) <= {0, 1}
    expect_union = (out["clean"][pos] == 1) & (out["pgd20"][pos] == 1) & (out["autoattack"][pos] == 1)
    assert torch.equal(out["union"][pos] == 1, expect_union)
    metrics = {
        t: m.to_json()
        for t, m in metrics_from_outcomes(
            make_outcomes(torch.arange(len(split)), split.labels, out), SPEC.classes
        ).items()
    }
    assert metrics["autoattack"]["n_per_class"] == [1] * 10
    assert metrics["pgd20"]["n_per_class"] == torch.bincount(split.labels, minlength=10).tolist()
    with pytest.raises(FairbenchError, match="clean"):
        evaluate_outcomes(mlp, split, eps=EPS, attacks=ALL, subsets={"clean": pos})


def test_outcomes_file_gives_the_metrics(mlp: nn.Module, data: dict[str, Split]) -> None:
    """outcomes.csv.gz rows regroup into exactly metrics.json's per-class numbers; same bytes twice."""
    import csv
    import gzip
    import io

    split = data["test3"]
    indices = torch.arange(100, 100 + len(split))
    pos = per_class_indices(split.labels, 2, SPEC.num_classes)
    metrics, _, out = evaluate(
        mlp, split, SPEC.classes, eps=EPS, attacks=["clean", "pgd20"], progress=lambda m: None, subsets={"pgd20": pos}
    )
    blob = outcomes_bytes(make_outcomes(indices, split.labels, out))
    assert blob == outcomes_bytes(make_outcomes(indices, split.labels, out))
    rows = list(csv.DictReader(io.StringIO(gzip.decompress(blob).decode())))
    assert list(rows[0]) == ["index", "label", "clean", "pgd20", "autoattack", "union"]
    assert [int(r["index"]) for r in rows] == indices.tolist()
    assert all(r["autoattack"] == "" for r in rows)
    for threat in ("clean", "pgd20", "union"):
        for c in range(10):
            cells = [int(r[threat]) for r in rows if int(r["label"]) == c and r[threat] != ""]
            assert len(cells) == metrics[threat]["n_per_class"][c]
            assert sum(cells) / len(cells) == pytest.approx(metrics[threat]["per_class"][c], abs=1e-6)


def _previous_feeding(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """How `autoattack_correct` fed AutoAttack before issue 11 (item 9): the chunk as given, the
    evaluator's batch size, the model as it came (trainable weights, its own memory format)."""
    from pyautoattack import AutoAttack

    adversary = AutoAttack(model, norm="Linf", eps=EPS, version="standard", device=x.device, seed=7)
    with threats.aa_logging(lambda m: None):
        x_adv, y_adv = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    return (y_adv == y) & threats.clean_correct(model, x_adv, y)


def test_autoattack_feeding_keeps_the_outcomes(mlp: nn.Module, data: dict[str, Split]) -> None:
    """Frozen weights, channels-last and even batches change how fast AutoAttack runs, not what it
    finds, wherever the batches stay the same: here every image the MLP gets right fits in one
    batch both ways, and channels-last is a no-op for an MLP. (Where the old feeding left a short
    last batch, even batches regroup the images; APGD's random starts and Square's square
    positions are drawn per batch from the reseeded RNG, so an image on the edge may then fall
    or survive differently: the same attack with other random draws.)"""
    split, batch_size = data["test3"], 32
    x, y = split.images.float() / 255, split.labels
    assert int(threats.clean_correct(mlp, x, y).sum()) <= batch_size
    with torch.random.fork_rng():
        expected = _previous_feeding(mlp, x, y, batch_size)
    assert any(p.grad is not None for p in mlp.parameters()), "FAB-T's .backward() filled .grad"
    for p in mlp.parameters():
        p.grad = None
    with torch.random.fork_rng():
        got = threats.autoattack_correct(mlp, x, y, eps=EPS, seed=7, batch_size=batch_size, progress=lambda m: None)
    assert expected.any() and not expected.all()
    assert torch.equal(got, expected)
    assert all(p.requires_grad and p.grad is None for p in mlp.parameters())


def test_attack_ready_restores_the_model() -> None:
    """Inside: channels-last, no weight gradients (FAB-T's .backward() computes none); after,
    even when the block fails: the old memory format, trainable weights, no .grad left."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 10))
    conv = model[2].weight
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    with pytest.raises(Killed):
        with threats.attack_ready(model):
            assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
            assert not any(p.requires_grad for p in model.parameters())
            model(x).sum().backward()
            assert x.grad is not None and all(p.grad is None for p in model.parameters())
            raise Killed
    assert conv.is_contiguous() and not conv.is_contiguous(memory_format=torch.channels_last)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
