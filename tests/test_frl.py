"""FRL (fairbench/methods/frl.py): multiplier updates, class weights, remargin eps, warm start, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fairbench.cli import main
from fairbench.data.datasets import DatasetSpec
from fairbench.distributed import DistInfo
from fairbench.errors import FairbenchError
from fairbench.methods.frl import ValidationErrors, class_weights
from fairbench.models import create_model
from fairbench.runs.folder import atomic_torch_save, read_jsonl
from fairbench.train.checkpoint import seed_everything
from fairbench.train.trainer import Trainer
from hypothesis import given, settings
from hypothesis import strategies as st

from cli_helpers import cli
from methods_helpers import CENTRES, SPEC, MeanGreyModel, bars, batch_ctx, build, epoch_ctx, grey_split, resolved

FRL_NAMES = ("frl-rw", "frl-rm", "frl-rwrm")


def raised(cls_nat: int | None = None, cls_bndy: int | None = None, amount: float = 0.5) -> ValidationErrors:
    """Validation errors of 0.1 everywhere, raised by ``amount`` on one class."""
    nat, bndy = torch.full((10,), 0.1), torch.full((10,), 0.1)
    if cls_nat is not None:
        nat[cls_nat] += amount
    if cls_bndy is not None:
        bndy[cls_bndy] += amount
    return ValidationErrors(nat, bndy, float(nat.mean()), float(bndy.mean()))


@pytest.mark.parametrize("name", FRL_NAMES)
def test_raised_natural_error_gets_the_largest_natural_weight(name: str) -> None:
    method = build(name, val_per_class=5)
    method.update(raised(cls_nat=3), 0)
    w = class_weights(method.lam_nat)
    assert int(w.argmax()) == 3 and w[3] > 0.1 + 1e-3
    assert torch.allclose(w.sum(), torch.tensor(1.0))


@pytest.mark.parametrize(
    "name, reweights, remargins", [("frl-rw", True, False), ("frl-rm", False, True), ("frl-rwrm", True, True)]
)
def test_raised_boundary_error_moves_what_the_variant_updates(name: str, reweights: bool, remargins: bool) -> None:
    method = build(name, val_per_class=5)
    method.update(raised(cls_bndy=5), 0)
    w_bndy, mult = class_weights(method.lam_bndy), method.eps_multiplier()
    if reweights:
        assert int(w_bndy.argmax()) == 5 and w_bndy[5] > 0.1 + 1e-3
    else:
        assert torch.allclose(w_bndy, torch.full((10,), 0.1))
    if remargins:
        assert int(mult.argmax()) == 5 and mult[5] > 1.0 and (mult[torch.arange(10) != 5] <= 1).all()
    else:
        assert torch.equal(mult, torch.ones(10))


def test_plan_epoch_measures_validation_and_sets_class_eps() -> None:
    """Class 3 is clean-wrong and class 5 fragile on validation: both get what FRL gives them."""
    method = build("frl-rwrm", {"warmup_fraction": "0"}, val_per_class=5, eps=0.03)
    levels, labels = [], []
    for c in range(10):
        shift = {3: 0.07, 5: 0.03}.get(c, 0.0)  # 3: past the 3/4 midpoint; 5: 0.02 from it (< eps)
        levels += [float(CENTRES[c]) + shift] * 4
        labels += [c] * 4
    val = grey_split(levels, labels)
    train = grey_split([float(c) for c in CENTRES], list(range(10)))
    ctx = epoch_ctx(method, MeanGreyModel(), train, val, epoch=0)
    plan = method.plan_epoch(ctx)
    assert ctx.log["frl_val_nat_error"]["dress"] == 1.0 and ctx.log["frl_val_bndy_error"]["sandal"] == 1.0
    assert max(ctx.log["frl_weight_nat"], key=ctx.log["frl_weight_nat"].get) == "dress"
    assert max(ctx.log["frl_weight_bndy"], key=ctx.log["frl_weight_bndy"].get) == "sandal"
    assert plan.eps[5] > 0.03 and (plan.eps[torch.arange(10) != 5] <= 0.03).all()


errors = st.lists(st.floats(0, 1), min_size=10, max_size=10)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(errors, errors), min_size=1, max_size=8), st.sampled_from(FRL_NAMES))
def test_multipliers_never_negative(history: list, name: str) -> None:
    method = build(name, val_per_class=5)
    for t, (nat, bndy) in enumerate(history):
        nat_t, bndy_t = torch.tensor(nat), torch.tensor(bndy)
        method.update(ValidationErrors(nat_t, bndy_t, float(nat_t.mean()), float(bndy_t.mean())), t)
        for lam in (method.lam_nat, method.lam_bndy):
            assert (lam >= 0).all() and float(lam.sum()) <= method.params.lim + 1e-5
            w = class_weights(lam)
            assert (w >= 0).all() and abs(float(w.sum()) - 1) < 1e-5
        mult = method.eps_multiplier()
        assert (mult >= 0.98 - 1e-6).all() and (mult <= getattr(method.params, "eps_cap", 1.0) + 1e-6).all()


def test_needs_a_validation_split() -> None:
    with pytest.raises(FairbenchError, match="--val-per-class"):
        build("frl-rw")


def test_warmup_epochs_train_without_updates() -> None:
    method = build("frl-rw", {"warmup_fraction": "0.5"}, val_per_class=5)
    model = MeanGreyModel()
    split = grey_split([float(c) for c in CENTRES], list(range(10)))
    ctx = epoch_ctx(method, model, split, split, epoch=4, epochs=10)
    plan = method.plan_epoch(ctx)
    assert model.calls == 0 and ctx.log == {} and torch.equal(method.lam_nat, torch.zeros(10))
    assert torch.allclose(plan.eps, torch.full((10,), method.config.eps))
    method.plan_epoch(epoch_ctx(method, model, split, split, epoch=5, epochs=10))
    assert model.calls > 0


def test_a_hot_start_file_is_loaded_through_init_from(
    fmnist_dir: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The authors' protocol: a checkpoint made elsewhere (hot_start.pt), fine-tuned with FRL from
    the first epoch. It goes through the core's --init-from (checked, weights_only, recorded)."""
    torch.manual_seed(0)
    source = create_model("small-cnn", SPEC)
    atomic_torch_save(tmp_path / "hot_start.pt", {"model": source.state_dict()})
    seen = []
    real_fit = Trainer.fit
    monkeypatch.setattr(
        Trainer,
        "fit",
        lambda self, *a, **k: (
            seen.append({k: v.clone() for k, v in self.model.state_dict().items()}) or real_fit(self, *a, **k)
        ),
    )
    main_args = [
        "run",
        "--method",
        "frl-rw",
        "--arch",
        "small-cnn",
        "--dataset",
        "fashion-mnist",
        "--epochs",
        "1",
        "--val-per-class",
        "2",
        "--attacks",
        "clean",
        "--eval-per-class",
        "2",
        "--data-dir",
        str(fmnist_dir),
        "--out",
        str(tmp_path / "out"),
        "--run-id",
        "r",
        "--device",
        "cpu",
        "--no-progress",
        "--init-from",
        str(tmp_path / "hot_start.pt"),
        "--param",
        "warmup_fraction=0",
    ]
    code, err = cli(main_args, capsys)
    assert code == 0, err
    assert all(torch.equal(v, seen[0][k]) for k, v in source.state_dict().items())
    record = json.loads((tmp_path / "out" / "runs" / "r" / "metrics.json").read_text())["init_from"]
    assert record["file"] == str(tmp_path / "hot_start.pt") and record["weights"] == "file"
    with pytest.raises(FairbenchError, match="replaced by --init-from"):
        build("frl-rw", {"pretrained": str(tmp_path / "hot_start.pt")}, val_per_class=5)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a checkpoint", "cannot load checkpoint"),
        ("preact18", "does not fit this architecture"),  # a real checkpoint of another architecture
    ],
)
def test_bad_hot_start_fails_before_the_run_writes(
    content, message: str, fmnist_dir: Path, tmp_path: Path, capsys
) -> None:
    path = tmp_path / "hot_start.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        atomic_torch_save(path, create_model(content, SPEC).state_dict())
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "run",
                "--method",
                "frl-rw",
                "--arch",
                "small-cnn",
                "--dataset",
                "fashion-mnist",
                "--epochs",
                "1",
                "--val-per-class",
                "2",
                "--init-from",
                str(path),
                "--param",
                "warmup_fraction=0",
                "--data-dir",
                str(fmnist_dir),
                "--out",
                str(out),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: ") and message in err, err
    assert not out.exists()


def _trainer(run_dir: Path, epochs: int) -> Trainer:
    cfg, params, method_cls = resolved(
        "frl-rwrm", {"warmup_fraction": "0"}, epochs=epochs, batch_size=25, attack_steps=2, val_per_class=2, run_id="r"
    )
    seed_everything(cfg.seed)
    spec: DatasetSpec = SPEC
    model = create_model("small-cnn", spec)
    return Trainer(
        cfg,
        spec=spec,
        model=model,
        method=method_cls(params, cfg),
        train=bars(5, seed=1),
        val=bars(2, seed=2),
        run_dir=run_dir,
        dist=DistInfo(),
        device=torch.device("cpu"),
        progress=False,
    )


def test_resume_continues_the_multipliers_exactly(tmp_path: Path) -> None:
    straight = _trainer(tmp_path / "straight", epochs=2)
    (tmp_path / "straight").mkdir()
    straight.fit()
    assert float(straight.method.lam_nat.sum() + straight.method.lam_eps.abs().sum()) > 0

    (tmp_path / "cut").mkdir()
    first = _trainer(tmp_path / "cut", epochs=2)
    first.train_epoch(0)
    first.save_checkpoint(1)  # the run dies here
    resumed = _trainer(tmp_path / "cut", epochs=2)
    resumed.resume()
    resumed.fit()
    for key, value in straight.method.state_dict().items():
        assert torch.equal(value, resumed.method.state_dict()[key]), key
    for p, q in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(p, q)
    log = read_jsonl(tmp_path / "cut" / "log.jsonl")
    assert [r["epoch"] for r in log] == [2] and "frl_eps_multiplier" in log[-1]


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("frl-rw", {"lim": "1"}, "lim"),
        ("frl-rw", {"rate": "0"}, "rate"),
        ("frl-rw", {"warmup_fraction": "1"}, "warmup_fraction"),
        ("frl-rm", {"eps_cap": "0.5"}, "eps_cap"),
        ("frl-rw", {"eps_cap": "2"}, "unknown parameter 'eps_cap'"),  # reweight has no remargin knobs
        ("frl-rm", {"normalization": "sum"}, "normalization must be one of separate, joint"),
    ],
)
def test_bad_params_are_clear_errors(name: str, params: dict, message: str) -> None:
    with pytest.raises(FairbenchError, match=message):
        build(name, params, val_per_class=5)


def test_init_from_with_a_warmup_is_refused() -> None:
    """Fine-tuning a trained model runs FRL from the first epoch (the authors' protocol); the
    from-scratch warm-up (default 0.75 of the run) would first train it on as plain TRADES."""
    with pytest.raises(FairbenchError, match="add --param warmup_fraction=0"):
        build("frl-rw", val_per_class=5, init_from="hot_start.pt")
    assert build("frl-rw", {"warmup_fraction": "0"}, val_per_class=5, init_from="hot_start.pt")


@pytest.mark.parametrize(
    "name, beta, lim, normalization",
    [
        ("frl-rw", 1.5, 0.5, "separate"),  # frlrw.py at a80547d (beta 1.5 since 5f58bc7)
        ("frl-rm", 1.0, 0.3, "joint"),  # frlrm.py at 18d1177, its last version
        ("frl-rwrm", 1.5, 0.5, "separate"),  # frlrmrw.py at a80547d (beta 1.5 since bd2b279)
    ],
)
def test_defaults_are_the_authors_newest(name: str, beta: float, lim: float, normalization: str) -> None:
    p = build(name, val_per_class=5).params
    assert (p.beta, p.lim, p.normalization, p.warmup_fraction) == (beta, lim, normalization, 0.75)


@pytest.mark.parametrize("normalization", ["separate", "joint"])
def test_loss_normalization(monkeypatch, normalization: str) -> None:
    """separate: sum(w_nat CE)/sum(w_nat) + beta sum(w_bndy KL)/sum(w_bndy) (utils_frl.py,
    utils_frl2.py); joint: sum(w_nat CE + beta w_bndy KL)/sum(w_nat + w_bndy) (frlrm.py). With
    uniform weights on a balanced batch the joint loss is exactly half the separate one."""
    import fairbench.methods.frl as frl

    natural, boundary = torch.arange(1.0, 11.0), torch.linspace(0.1, 2.0, 10)
    monkeypatch.setattr(frl, "trades_terms", lambda ctx: (natural, boundary))
    method = build("frl-rwrm", {"normalization": normalization, "beta": "2"}, val_per_class=5)
    x, y = torch.zeros(10, 1, 28, 28), torch.arange(10)
    uniform = method.loss(batch_ctx(MeanGreyModel(), x, y, 0.1))
    separate = natural.mean() + 2 * boundary.mean()
    assert torch.allclose(uniform, separate if normalization == "separate" else separate / 2)

    method.lam_nat = torch.tensor([0.3] + [0.0] * 9)
    method.lam_bndy = torch.tensor([0.0] * 9 + [0.2])
    method._device_weights = None
    w_nat, w_bndy = class_weights(method.lam_nat), class_weights(method.lam_bndy)
    expected = (
        (w_nat * natural).sum() / w_nat.sum() + 2 * (w_bndy * boundary).sum() / w_bndy.sum()
        if normalization == "separate"
        else (w_nat * natural + 2 * w_bndy * boundary).sum() / (w_nat + w_bndy).sum()
    )
    assert torch.allclose(method.loss(batch_ctx(MeanGreyModel(), x, y, 0.1)), expected)


def test_the_authors_frl_rm_schedule_is_a_piecewise_schedule() -> None:
    """frlrm.py fine-tunes 120 epochs, MultiStepLR milestones 40 and 80 (0-based epoch indices):
    ``--schedule piecewise:0.3333,0.6666`` (the docstring's command) drops at exactly those."""
    from fairbench.train.trainer import lr_factor

    factors = [lr_factor(e, 120, "piecewise:0.3333,0.6666") for e in range(120)]
    assert factors == [1.0] * 40 + [0.1] * 40 + [0.01] * 40
