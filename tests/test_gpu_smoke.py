"""bench/gpu_smoke.py is not dead code: its CPU-runnable checks run here and pass (the GPU run
itself needs a CUDA device; see bench/README.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import gpu_smoke  # noqa: E402

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    "check",
    [
        lambda tmp: gpu_smoke.check_attack_precision(CPU, "small-cnn", train_steps=1),
        lambda tmp: gpu_smoke.check_host_syncs(CPU, "small-cnn", tmp),
        lambda tmp: gpu_smoke.check_resume_layouts(CPU, tmp),
        lambda tmp: gpu_smoke.check_compiled_backward(CPU, "small-cnn", time_inductor=False),
        lambda tmp: gpu_smoke.check_method_host_syncs(CPU, "small-cnn", tmp),
    ],
    ids=["attack-precision", "host-syncs", "resume-layouts", "compiled-backward", "method-host-syncs"],
)
def test_cpu_runnable_checks_pass(check, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(gpu_smoke, "PER_CLASS", 8)  # tiny synthetic splits: seconds, not minutes
    lines = check(tmp_path)
    assert lines and all(status in ("PASS", "INFO", "SKIP") for _name, (status, _m, _e) in lines), lines
    assert any(status == "PASS" for _name, (status, _m, _e) in lines)


def test_without_a_gpu_cuda_mode_is_one_error_line(capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert gpu_smoke.main(["--device", "cuda"]) == 2
    assert capsys.readouterr().err.startswith("error: no CUDA device")
