"""DDP under torchrun on the CPU (gloo): 2 processes train as one, write one result folder, resume
under 2 or 1 processes; a method whose loss bypasses DDP is stopped with a clear error, and so is
every process when rank 0 alone fails.

Each launch is ``python -m torch.distributed.run --nproc_per_node=2`` on a small wrapper script that
calls the real CLI; the wrapper (test code, not fairbench's) dumps every rank's trained weights just
before evaluation and can stop a run after a given epoch, as a preempted job would be.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from fairbench.methods import METHODS as REGISTRY
from fairbench.runs import folder as results

from cli_helpers import run_ok
from conftest import make_fashion_mnist

WRAPPER = """
import os, sys
import torch
import fairbench.eval.evaluator as evaluator
from fairbench.train.trainer import Trainer

real_evaluate, real_train_epoch = evaluator.evaluate, Trainer.train_epoch

def evaluate(model, *args, **kwargs):  # the weights this rank ends training with
    rank = os.environ.get("RANK", "0")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    torch.save(state, os.path.join(os.environ["DUMP_DIR"], f"rank{rank}.pt"))
    return real_evaluate(model, *args, **kwargs)

def train_epoch(self, epoch):
    if epoch == int(os.environ.get("STOP_AFTER", "-1")):  # every rank stops between epochs,
        torch.distributed.barrier()                      # together (see shutdown_distributed),
        raise SystemExit(0)                              # like a preempted job
    return real_train_epoch(self, epoch)

evaluator.evaluate, Trainer.train_epoch = evaluate, train_epoch

if os.environ.get("STOP_AT_CALL"):  # every rank is told to stop at the same step, as on SIGTERM
    calls = iter(range(1, 10**6))
    Trainer._stop_requested = lambda self, step: next(calls) == int(os.environ["STOP_AT_CALL"])

if os.environ.get("BYPASS_DDP"):  # a broken method: its training forward skips the DDP wrapper
    import torch.nn.functional as F
    from fairbench.methods.base import Method
    from fairbench.methods import register_method

    @register_method("bypass-ddp")
    class BypassDDP(Method):
        name = "bypass-ddp"

        def loss(self, ctx):
            return F.cross_entropy(ctx.attack_model(ctx.x), ctx.y)

from fairbench.cli import main
# each rank records its exit status: torchrun reports the first failure's, then SIGTERMs the ranks
# still running, even one that has printed the same error and is exiting
try:
    main(sys.argv[1:])
except SystemExit as exc:
    with open(os.path.join(os.environ["DUMP_DIR"], f"exit{os.environ['RANK']}"), "w") as f:
        f.write(str(exc.code))
    raise
"""

# Every registered method, e.g. pgd-at: one loss forward; trades: two (clean and adversarial)
# before one backward; fairat: a scoring pass over the training set before every epoch; frl-rwrm:
# a clean + PGD-20 pass over the validation split and per-class weights and eps in its second
# epoch; cfa: per-class statistics of the training batches, a validation pass and a weight
# average; dafa: the class-similarity statistics of its first epoch; faal: a solve over the whole
# (global) batch, fine-tuning a finished run.
METHODS = REGISTRY.names()


def run_args(data_dir: Path, out: Path, method: str = "pgd-at") -> list[str]:
    return [
        "run",
        "--method",
        method,
        "--arch",
        "small-cnn",
        "--dataset",
        "fashion-mnist",
        "--epochs",
        "2",
        "--batch-size",
        "40",
        "--attack-steps",
        "3",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        "--run-id",
        "r",
        "--device",
        "cpu",
        "--no-progress",
        "--attacks",
        "clean,pgd20",
        "--val-per-class",
        "5",
    ]  # every method trains on the same 150 images (FRL needs the 50 held out)


def method_args(data_dir: Path, out: Path, method: str, source: Path) -> list[str]:
    """`run_args`, plus the finished run to start from for a method that fine-tunes one."""
    return run_args(data_dir, out, method) + (
        ["--init-from", str(source)] if REGISTRY.get(method).requires_init else []
    )


def torchrun(tmp: Path, args: list[str], dump: Path, stop_after: int = -1, expect: int = 0, **env_extra: str) -> str:
    """Run the CLI in 2 gloo processes; returns their combined output."""
    wrapper = tmp / "wrapper.py"
    wrapper.write_text(WRAPPER)
    dump.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", DUMP_DIR=str(dump), STOP_AFTER=str(stop_after), **env_extra)
    # --standalone: a rendezvous on a port the OS picks, so parallel test runs never collide
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(wrapper), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert (proc.returncode == 0) == (expect == 0), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr if expect else proc.stdout


def shape(obj: Any) -> Any:
    """A JSON document's keys, recursively (values dropped)."""
    if isinstance(obj, dict):
        return {k: shape(v) for k, v in obj.items()}
    if isinstance(obj, list) and obj and isinstance(obj[0], dict):
        return [shape(obj[0])]
    return None


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"tensors differ: {differ}"


def load_log(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train_per_class=20, n_test_per_class=5)


@pytest.fixture(scope="module")
def source(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished single-process pgd-at run, for the methods that fine-tune one."""
    out = tmp_path_factory.mktemp("source")
    run_ok(run_args(data_dir, out))
    return out / "runs" / "r"


@pytest.fixture(scope="module")
def ddp_run(
    data_dir: Path, source: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], tuple[Path, str]]:
    """One uninterrupted 2-process run per method (shared by the tests): (its folder, its output)."""
    done: dict[str, tuple[Path, str]] = {}

    def get(method: str) -> tuple[Path, str]:
        if method not in done:
            tmp = tmp_path_factory.mktemp(f"ddp-{method}")
            out = torchrun(tmp, method_args(data_dir, tmp / "results", method, source), tmp / "dump")
            done[method] = tmp, out
        return done[method]

    return get


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_train_one_model(method: str, ddp_run, data_dir: Path, source: Path, tmp_path: Path) -> None:
    tmp, output = ddp_run(method)
    rank0, rank1 = (torch.load(tmp / "dump" / f"rank{r}.pt") for r in (0, 1))
    assert_same_weights(rank0, rank1)  # parameters and batch-norm statistics alike
    ddp_dir = tmp / "results" / "runs" / "r"
    checkpoint = torch.load(ddp_dir / "checkpoint.pt", weights_only=True)
    assert_same_weights(rank0, {k: v.contiguous() for k, v in checkpoint["model"].items()})
    assert output.count("wrote ") == 1 and output.count("training ") == 1  # rank 0 alone prints

    run_ok(method_args(data_dir, tmp_path / "single", method, source))
    single_dir = tmp_path / "single" / "runs" / "r"
    assert sorted(p.name for p in ddp_dir.iterdir()) == sorted(p.name for p in single_dir.iterdir())
    for name in ("metrics.json", "config.json"):
        ddp, single = (json.loads((d / name).read_text()) for d in (ddp_dir, single_dir))
        assert shape(ddp) == shape(single), name
    ddp_metrics = json.loads((ddp_dir / "metrics.json").read_text())
    assert sum(ddp_metrics["metrics"]["pgd20"]["n_per_class"]) == 50  # every test image, once
    assert ddp_metrics["timing"]["world_size"] == 2
    assert {k: ddp_metrics["training"][k] for k in ("sync_bn", "world_size", "bn_batch")} == {
        "sync_bn": False,
        "world_size": 2,
        "bn_batch": 20,
    }  # batch norm saw each process's 20 images
    ddp_log, single_log = load_log(ddp_dir), load_log(single_dir)
    assert [r["epoch"] for r in ddp_log] == [r["epoch"] for r in single_log] == [1, 2]
    assert [r["examples"] for r in ddp_log] == [150, 150]  # the ranks' shards cover the epoch
    assert [shape(r) for r in ddp_log] == [shape(r) for r in single_log]
    if method == "frl-rwrm":  # its second epoch measured the validation split and moved the multipliers
        assert "frl_weight_nat" not in ddp_log[0] and len(ddp_log[1]["frl_eps_multiplier"]) == 10


def test_resume_under_two_and_one_processes(ddp_run, data_dir: Path, tmp_path: Path) -> None:
    reference_tmp, _ = ddp_run("pgd-at")
    reference = torch.load(reference_tmp / "dump" / "rank0.pt")
    args = run_args(data_dir, tmp_path / "results")
    torchrun(tmp_path, args, tmp_path / "stopped", stop_after=1)
    run_dir = tmp_path / "results" / "runs" / "r"
    assert [r["epoch"] for r in load_log(run_dir)] == [1] and not (run_dir / "metrics.json").exists()
    shutil.copytree(tmp_path / "results", tmp_path / "copy")

    # the same number of processes: each rank continues its own RNG streams, so bit-identical
    torchrun(tmp_path, args + ["--resume"], tmp_path / "resumed")
    assert_same_weights(torch.load(tmp_path / "resumed" / "rank0.pt"), reference)
    assert [r["epoch"] for r in load_log(run_dir)] == [1, 2]

    # one process picks up the same checkpoint and finishes the run
    run_ok(run_args(data_dir, tmp_path / "copy") + ["--resume"])
    copy_dir = tmp_path / "copy" / "runs" / "r"
    assert [r["epoch"] for r in load_log(copy_dir)] == [1, 2]
    metrics = json.loads((copy_dir / "metrics.json").read_text())
    assert metrics["timing"]["world_size"] == 1 and sum(metrics["metrics"]["clean"]["n_per_class"]) == 50


@pytest.mark.parametrize("method", ["cfa", "dafa"])
def test_resume_inside_an_epoch_keeps_the_class_statistics_of_both_processes(
    method: str, ddp_run, data_dir: Path, tmp_path: Path
) -> None:
    """Both processes stop inside epoch 1 (after its step 2 of 4), where CFA counts each class's
    robust training predictions and DAFA records its class-similarity matrix: each process holds
    part of the sums. The checkpoint keeps all of them (in rank 0's method state), and the resumed
    run ends with the uninterrupted run's weights, bit for bit."""
    reference_tmp, _ = ddp_run(method)
    args = run_args(data_dir, tmp_path / "results", method)
    output = torchrun(tmp_path, args, tmp_path / "stopped", expect=75, STOP_AT_CALL="2")
    assert "in epoch 1 after step 2 of 4" in output
    state = results.load_checkpoint(tmp_path / "results" / "runs" / "r" / "checkpoint.pt")
    counts = state["method"]["correct" if method == "cfa" else "probs"]["counts"]
    assert counts.sum() == 2 * 2 * 20  # two steps of both processes' 20 examples
    torchrun(tmp_path, args + ["--resume"], tmp_path / "resumed")
    reference = torch.load(reference_tmp / "dump" / "rank0.pt")
    assert_same_weights(torch.load(tmp_path / "resumed" / "rank0.pt"), reference)


def test_a_loss_that_bypasses_ddp_is_stopped(data_dir: Path, tmp_path: Path) -> None:
    args = run_args(data_dir, tmp_path / "results", "bypass-ddp")
    args[args.index("--epochs") + 1] = "1"
    output = torchrun(tmp_path, args, tmp_path / "dump", expect=1, BYPASS_DDP="1")
    assert "error: epoch 1: the processes' weights differ" in output
    assert "must compute its loss forward with ctx.model" in output
    assert not (tmp_path / "results" / "runs" / "r" / "checkpoint.pt").exists()


def test_an_error_on_rank_0_alone_stops_every_rank(data_dir: Path, tmp_path: Path) -> None:
    """Rank 0 alone locks the run folder (and writes the log, checkpoints and metrics): its error
    reaches every rank, which would otherwise wait for it until torchrun killed them ("preempted")."""
    out = tmp_path / "results"
    run_dir = out / "runs" / "r"
    run_dir.mkdir(parents=True)
    with results.run_lock(run_dir):  # another run is using the folder
        output = torchrun(tmp_path, run_args(data_dir, out), tmp_path / "dump", expect=2)
    assert output.count("error: another fairbench process is using") == 2
    assert "preempted" not in output
    assert [(tmp_path / "dump" / f"exit{rank}").read_text() for rank in (0, 1)] == ["2", "2"]
    assert list(run_dir.iterdir()) == []


MAP_SCRIPT = """
import json, sys
import torch
import torch.distributed as dist
from fairbench.data.datasets import Split, map_sharded
from fairbench.distributed import DistInfo

dist.init_process_group("gloo")
info = DistInfo(dist.get_rank(), dist.get_world_size())
split = Split((torch.arange(5 * 4) * 10).to(torch.uint8).reshape(5, 1, 2, 2), torch.arange(5))

def fn(x, y):  # two values per example, so the trailing shape matters
    return torch.stack([x.flatten(1).sum(1), y.double()], 1)

out = {}
for n in (1, 2, 3, 5):  # n = 1: rank 1's shard is empty
    indices = torch.arange(n).flip(0)  # out of order: the result follows the indices
    out[n] = [map_sharded(fn, split, info, 2, indices).tolist(),
              map_sharded(fn, split, DistInfo(), 2, indices).tolist()]
if info.is_main:
    json.dump(out, open(sys.argv[1], "w"))
dist.destroy_process_group()
"""


def test_map_sharded_gathers_every_example_in_order(tmp_path: Path) -> None:
    """The one sharded loop (FairAT's scoring, FRL's validation, the evaluator's chunks): two
    processes give what one gives, also when a process has no example of its own."""
    script = tmp_path / "map.py"
    script.write_text(MAP_SCRIPT)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        str(tmp_path / "out.json"),
    ]
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert sorted(out) == ["1", "2", "3", "5"]
    for n, (two, one) in out.items():
        assert two == one
        assert [row[1] for row in one] == list(range(int(n)))[::-1]


DOWNLOAD_SCRIPT = """
import json, os, sys, time
from pathlib import Path
import torch
import torch.distributed as dist
from fairbench.data.datasets import DatasetSpec, load_splits
from fairbench.distributed import init_distributed
from fairbench.errors import FairbenchError

log, root = Path(sys.argv[1]), sys.argv[2]
rank = int(os.environ["RANK"])

def load(split, folder, download):  # a stand-in for torchvision: download = write the files
    start = time.time()
    done = folder / "standin.done"
    if os.environ.get("FAIL") and download:
        raise FairbenchError("standin: the download failed")
    if download and not done.exists():
        time.sleep(0.3)
        folder.mkdir(parents=True, exist_ok=True)
        done.write_text("x")
    elif not done.exists():
        raise FairbenchError("standin: missing")
    with open(log, "a") as f:
        f.write(json.dumps([rank, split, download, start, time.time()]) + "\\n")
    return torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.zeros(2, dtype=torch.long)

spec = DatasetSpec("standin", ("a", "b"), (1, 2, 2), (0.0,), (1.0,), 0.1, 0.025, 0, False, load)
info = init_distributed("cpu")
try:
    load_splits(spec, ("train", "test"), root, True, info)
    outcome = "ok"
except FairbenchError as exc:
    outcome = str(exc)
Path(f"{log}.rank{rank}").write_text(outcome)
dist.destroy_process_group()
"""


@pytest.mark.parametrize("fail", [False, True])
def test_one_process_downloads_the_others_wait_and_only_read(tmp_path: Path, fail: bool) -> None:
    """Under torchrun, rank 0 downloads first; rank 1 loads after it is done and never downloads
    (before, every rank downloaded into the same folder at once). A failed download stops both
    ranks with the downloading rank's message."""
    script, log = tmp_path / "download.py", tmp_path / "log.jsonl"
    script.write_text(DOWNLOAD_SCRIPT)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        str(log),
        str(tmp_path / "data"),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", **({"FAIL": "1"} if fail else {}))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    outcomes = [Path(f"{log}.rank{r}").read_text() for r in (0, 1)]
    if fail:
        assert outcomes == ["standin: the download failed"] * 2
        return
    assert outcomes == ["ok", "ok"]
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    first = [c for c in calls if c[0] == 0]
    second = [c for c in calls if c[0] == 1]
    assert [(c[1], c[2]) for c in first] == [("train", True), ("test", True)]
    assert [(c[1], c[2]) for c in second] == [("train", False), ("test", False)]
    assert min(c[3] for c in second) >= max(c[4] for c in first)


def test_each_process_finds_its_gpu() -> None:
    """torchrun: GPU LOCAL_RANK; a scheduler that shows each task one GPU: GPU 0 (cuda:LOCAL_RANK
    failed there); more processes than visible GPUs otherwise: one clear error."""
    from fairbench.distributed import cuda_index
    from fairbench.errors import FairbenchError

    assert [cuda_index(r, 4) for r in range(4)] == [0, 1, 2, 3]
    assert [cuda_index(r, 1) for r in range(4)] == [0, 0, 0, 0]
    with pytest.raises(FairbenchError, match="LOCAL_RANK is 3 but this process sees 2 GPUs"):
        cuda_index(3, 2)


def test_run_and_eval_map_a_rank_to_its_gpu_by_one_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """`fairbench run`, `fairbench eval` and the API share `process_group`: under a scheduler that
    shows each task one GPU, rank 1 gets cuda:0 (eval used to ask for cuda:1, which does not exist)."""
    import inspect

    import fairbench.distributed as D
    import fairbench.eval.external as E
    import fairbench.train.runner as R

    picked: list[torch.device] = []
    monkeypatch.setattr(D, "init_distributed", lambda kind: D.DistInfo(1, 2, 1))
    monkeypatch.setattr(D, "shutdown_distributed", lambda: None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", picked.append)
    with D.process_group(torch.device("cuda")) as (device, info):
        assert device == torch.device("cuda", 0) and info.rank == 1 and picked == [device]
    for module in (R, E):
        source = inspect.getsource(module)
        assert "process_group(" in source and "init_distributed(" not in source
