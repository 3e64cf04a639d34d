"""Threats are registered objects: the evaluator, the results schema and the report take every
threat name from the registry, so a new threat is one registration."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import gzip
import pytest
import torch
from torch import nn

from fairbench.data import Split
from fairbench.evaluate import attack_settings, evaluate_outcomes, stages
from fairbench.threats import THREATS, register_threat
from fairbench.report.command import build_leaderboard, write_report
from fairbench.schema import build_record, make_outcomes, outcomes_bytes, write_run
from fairbench.threats import Threat, clean_correct, get_threat, in_batches, threat_label, threat_names


def test_builtin_threats_in_column_order() -> None:
    assert threat_names() == ["clean", "pgd20", "autoattack"]
    assert [threat_label(t) for t in threat_names() + ["union"]] == ["clean", "PGD-20", "AutoAttack", "union"]
    for name in threat_names():
        assert get_threat(name).name == name  # the class says the name it is registered under
    assert not get_threat("clean").attack and get_threat("pgd20").attack
    assert attack_settings(0.1, ["pgd20"], seed=3)["pgd20"]["steps"] == 20


@pytest.fixture
def l2_threat() -> Iterator[type]:
    """A toy L2 threat, registered for one test and removed after it."""

    @register_threat("l2noise")
    class L2Noise(Threat):
        """Gaussian noise of L2 norm eps (a stand-in for an L2 PGD)."""

        name, label, order = "l2noise", "L2 noise", 15

        def settings(self, eps: float, seed: int) -> dict[str, Any]:
            return {"norm": "L2", "eps": eps, "seed": seed}

        def decider(self, model: nn.Module, *, eps: float, batch_size: int, progress) -> Any:
            def correct(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                noise = torch.randn_like(x)
                noise = noise * eps / noise.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
                return clean_correct(model, (x + noise).clamp(0, 1), y)

            return lambda x, y, seed: in_batches(correct, batch_size)(x, y)

    yield L2Noise
    del THREATS._entries["l2noise"]


def test_a_new_threat_is_one_registration(l2_threat: type, tmp_path: Path) -> None:
    """Registered, the toy threat is evaluated, written to outcomes and metrics.json, validated on
    reading, and shown in the leaderboard under its label; nothing else was edited."""
    assert threat_names() == ["clean", "pgd20", "l2noise", "autoattack"]
    assert stages(["l2noise"]) == ["clean", "l2noise"]
    torch.manual_seed(0)
    labels = torch.arange(10).repeat_interleave(3)
    split = Split(torch.randint(0, 255, (30, 1, 28, 28), dtype=torch.uint8), labels)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    out, _ = evaluate_outcomes(model, split, eps=0.5, attacks=["l2noise"], progress=lambda m: None)
    assert set(out) == {"clean", "l2noise", "union"}
    rows = make_outcomes(torch.arange(30), labels, {t: o.cpu() for t, o in out.items()})
    header = gzip.decompress(outcomes_bytes(rows)).decode().splitlines()[0]
    assert header == "index,label,clean,pgd20,l2noise,autoattack,union"
    record = build_record(run_id="r", method="pgd-at", params={}, arch="toy", dataset="fashion-mnist", seed=0,
                          epochs=1, eps=0.5, training={}, outcomes=rows,
                          attack_settings=attack_settings(0.5, ["l2noise"]))
    run_dir = tmp_path / "results" / "runs" / "r"
    run_dir.mkdir(parents=True)
    write_run(run_dir, record, rows)
    board = build_leaderboard(tmp_path / "results")
    assert not board.skipped and board.groups[0].threats == ("clean", "l2noise", "union")
    _, markdown, _ = write_report(tmp_path / "results", board)
    assert "L2 noise avg" in markdown
