"""Data: real loaders on files in the data sets' own formats, data root, augmentation, subsets."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import fairbench.data.datasets as data
import numpy as np
import pytest
import torch
import torchvision
from fairbench.data.datasets import (
    Split,
    data_root,
    get_dataset,
    load_split,
    per_class_indices,
    random_crop,
    random_hflip,
    standard_augment,
    train_val_split,
)
from fairbench.errors import FairbenchError
from fairbench.specs._cifar100_names import CIFAR100_CLASSES

from conftest import write_idx

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------- CIFAR in its pickle format


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _batch(rng: np.random.Generator, n: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images N×3×32×32 uint8 and labels, flattened the CIFAR way when written."""
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, num_classes, n)


def write_cifar10(root: Path, monkeypatch: pytest.MonkeyPatch, n: int = 4) -> dict[str, np.ndarray]:
    """cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}; torchvision md5s patched."""
    rng = np.random.default_rng(10)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_x, train_y, train_list = [], [], []
    for i in range(1, 6):
        x, y = _batch(rng, n, 10)
        _dump(
            folder / f"data_batch_{i}",
            {
                "batch_label": f"training batch {i} of 5",
                "labels": y.tolist(),
                "data": x.reshape(n, 3072),
                "filenames": [f"img{i}_{j}.png" for j in range(n)],
            },
        )
        train_x.append(x)
        train_y.append(y)
        train_list.append([f"data_batch_{i}", _md5(folder / f"data_batch_{i}")])
    test_x, test_y = _batch(rng, n + 1, 10)
    _dump(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": test_y.tolist(),
            "data": test_x.reshape(-1, 3072),
            "filenames": ["t.png"] * (n + 1),
        },
    )
    _dump(
        folder / "batches.meta", {"num_cases_per_batch": n, "num_vis": 3072, "label_names": list(data.CIFAR10_CLASSES)}
    )
    cls = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", train_list)
    monkeypatch.setattr(cls, "test_list", [["test_batch", _md5(folder / "test_batch")]])
    monkeypatch.setattr(cls, "meta", dict(cls.meta, md5=_md5(folder / "batches.meta")))
    return {"train_x": np.concatenate(train_x), "train_y": np.concatenate(train_y), "test_x": test_x, "test_y": test_y}


def write_cifar100(root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, np.ndarray]:
    """cifar-100-python/{train,test,meta} with fine and coarse labels; torchvision md5s patched."""
    rng = np.random.default_rng(100)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for split, n in (("train", 12), ("test", 7)):
        x, y = _batch(rng, n, 100)
        _dump(
            folder / split,
            {
                "filenames": [f"{j}.png" for j in range(n)],
                "batch_label": split,
                "fine_labels": y.tolist(),
                "coarse_labels": (y // 5).tolist(),
                "data": x.reshape(n, 3072),
            },
        )
        out[f"{split}_x"], out[f"{split}_y"] = x, y
    _dump(
        folder / "meta",
        {"fine_label_names": list(CIFAR100_CLASSES), "coarse_label_names": [f"super{i}" for i in range(20)]},
    )
    cls = torchvision.datasets.CIFAR100
    monkeypatch.setattr(cls, "train_list", [["train", _md5(folder / "train")]])
    monkeypatch.setattr(cls, "test_list", [["test", _md5(folder / "test")]])
    monkeypatch.setattr(cls, "meta", dict(cls.meta, md5=_md5(folder / "meta")))
    return out


def _check_split(split: Split, images: np.ndarray, labels: np.ndarray) -> None:
    assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
    assert split.images.shape == images.shape
    assert torch.equal(split.images, torch.from_numpy(images))  # channel planes, row-major, as written
    assert torch.equal(split.labels, torch.from_numpy(labels).long())


@pytest.mark.parametrize("download", [False, True])  # files present: no network is ever needed
def test_cifar10_loader_reads_cifar_pickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, download: bool) -> None:
    written = write_cifar10(tmp_path, monkeypatch)
    spec = get_dataset("cifar10")
    _check_split(load_split(spec, "train", tmp_path, download), written["train_x"], written["train_y"])
    _check_split(load_split(spec, "test", tmp_path, download), written["test_x"], written["test_y"])
    assert spec.shape == (3, 32, 32) and spec.num_classes == 10


def test_cifar100_loader_reads_cifar_pickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = write_cifar100(tmp_path, monkeypatch)
    spec = get_dataset("cifar100")
    _check_split(load_split(spec, "train", tmp_path, False), written["train_x"], written["train_y"])
    _check_split(load_split(spec, "test", tmp_path, False), written["test_x"], written["test_y"])
    assert spec.num_classes == 100
    # the class names follow the label order of CIFAR-100's meta file, which is alphabetical
    assert list(spec.classes) == sorted(spec.classes) and len(set(spec.classes)) == 100


def test_cifar_missing_or_corrupted_names_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = get_dataset("cifar10")
    with pytest.raises(FairbenchError) as exc:
        load_split(spec, "train", tmp_path / "empty", download=False)
    message = str(exc.value)
    assert str(tmp_path / "empty" / "cifar-10-batches-py") in message
    assert "network" in message and "--data-dir" in message
    write_cifar10(tmp_path / "bad", monkeypatch)
    with open(tmp_path / "bad" / "cifar-10-batches-py" / "data_batch_3", "ab") as f:
        f.write(b"x")  # the md5 no longer matches
    with pytest.raises(FairbenchError, match="corrupted"):
        load_split(spec, "train", tmp_path / "bad", download=False)


# ---------------------------------------------------------------- Fashion-MNIST


def write_fmnist(folder: Path, seed: int, n: int = 20, gz: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = np.arange(n) % 10
        ext = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", x)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", y)
        out[f"{split}_x"], out[f"{split}_y"] = x[:, None], y
    return out


@pytest.fixture
def no_debian(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    missing = tmp_path / "no-debian-here"
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", missing)
    return missing


@pytest.mark.parametrize("layout, gz", [(".", True), (".", False), ("FashionMNIST/raw", True)])
def test_fashion_mnist_reads_idx_files(tmp_path: Path, no_debian: Path, layout: str, gz: bool) -> None:
    written = write_fmnist(tmp_path / "root" / layout, seed=1, gz=gz)
    spec = get_dataset("fashion-mnist")
    for split in ("train", "test"):
        _check_split(
            load_split(spec, split, tmp_path / "root", download=False), written[f"{split}_x"], written[f"{split}_y"]
        )


def test_fashion_mnist_real_debian_files(tmp_path: Path) -> None:
    """Debian's dataset-fashion-mnist (installed by scripts/setup.sh here and in CI)."""
    assert DEBIAN.is_dir(), "install it with: apt-get install dataset-fashion-mnist"
    spec = get_dataset("fashion-mnist")
    for split, n in (("train", 60000), ("test", 10000)):
        s = load_split(spec, split, tmp_path / "empty", download=False)
        assert s.images.shape == (n, 1, 28, 28) and s.images.dtype == torch.uint8
        assert torch.equal(torch.bincount(s.labels), torch.full((10,), n // 10))
        assert 0 < s.images.float().mean() < 255


def test_missing_offline_names_every_place_and_both_ways(tmp_path: Path, no_debian: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FairbenchError) as exc:
        load_split(get_dataset("fashion-mnist"), "train", empty, download=False)
    message = str(exc.value)
    assert "\n" not in message
    for place in (empty, empty / "FashionMNIST" / "raw", empty / "fashion-mnist", no_debian):
        assert str(place) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "network access" in message


def test_truncated_idx_is_a_clear_error(tmp_path: Path, no_debian: Path) -> None:
    write_fmnist(tmp_path, seed=2)
    raw = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(raw, np.zeros((5, 28, 28)))
    import gzip

    blob = gzip.decompress(raw.read_bytes())[:-10]
    raw.write_bytes(gzip.compress(blob))
    with pytest.raises(FairbenchError, match="truncated"):
        load_split(get_dataset("fashion-mnist"), "train", tmp_path, download=False)


@pytest.mark.parametrize("damage", ["cut", "garbage"])
def test_cut_or_corrupt_gzip_is_a_clear_error(tmp_path: Path, no_debian: Path, damage: str) -> None:
    """A download cut short (gzip's EOFError) or a damaged one (zlib/OSError) names the file."""
    write_fmnist(tmp_path, seed=2)
    raw = tmp_path / "train-images-idx3-ubyte.gz"
    blob = raw.read_bytes()
    raw.write_bytes(blob[: len(blob) // 2] if damage == "cut" else blob[:20] + b"\xff" * 200)
    with pytest.raises(FairbenchError, match=f"cannot read {raw}"):
        load_split(get_dataset("fashion-mnist"), "train", tmp_path, download=False)


# ---------------------------------------------------------------- data root


def test_data_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("FAIRBENCH_DATA", raising=False)
    assert data_root() == tmp_path / "home" / ".cache" / "fairbench" / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_root() == tmp_path / "xdg" / "fairbench" / "data"
    monkeypatch.setenv("FAIRBENCH_DATA", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "flag") == tmp_path / "flag"


def test_loaders_use_the_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_debian: Path) -> None:
    """--data-dir beats $FAIRBENCH_DATA beats the cache folder, for the real loading path."""
    spec = get_dataset("fashion-mnist")
    cache = write_fmnist(tmp_path / "xdg" / "fairbench" / "data", seed=3)
    env = write_fmnist(tmp_path / "env", seed=4)
    flag = write_fmnist(tmp_path / "flag", seed=5)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("FAIRBENCH_DATA", raising=False)
    _check_split(load_split(spec, "test", None, False), cache["test_x"], cache["test_y"])
    monkeypatch.setenv("FAIRBENCH_DATA", str(tmp_path / "env"))
    _check_split(load_split(spec, "test", None, False), env["test_x"], env["test_y"])
    _check_split(load_split(spec, "test", tmp_path / "flag", False), flag["test_x"], flag["test_y"])


# ---------------------------------------------------------------- augmentation


def _windows(img: torch.Tensor, padding: int) -> list[torch.Tensor]:
    """Every H×W window of the zero-padded image (brute force)."""
    c, h, w = img.shape
    padded = torch.zeros(c, h + 2 * padding, w + 2 * padding, dtype=img.dtype)
    padded[:, padding : padding + h, padding : padding + w] = img
    return [padded[:, dy : dy + h, dx : dx + w] for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)]


def _window_index(out: torch.Tensor, img: torch.Tensor, padding: int) -> int | None:
    for i, win in enumerate(_windows(img, padding)):
        if torch.equal(out, win):
            return i
    return None


def test_random_crop_is_a_window_of_the_padded_input() -> None:
    torch.manual_seed(0)
    x = torch.rand(300, 2, 5, 6) + 0.5  # no zeros, so the padding is recognisable
    out = random_crop(x, 2)
    assert out.shape == x.shape
    seen = set()
    for i in range(len(x)):
        idx = _window_index(out[i], x[i], 2)
        assert idx is not None, f"example {i} is not a window of its padded input"
        seen.add(idx)
    assert len(seen) == 25  # every one of the (2p+1)^2 offsets occurs
    assert torch.equal(random_crop(x, 0), x)


def test_random_crop_follows_its_generator() -> None:
    x = torch.rand(16, 1, 4, 4)
    a = random_crop(x, 1, torch.Generator().manual_seed(3))
    b = random_crop(x, 1, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_hflip_flips_only_the_width_axis() -> None:
    torch.manual_seed(0)
    x = torch.rand(200, 3, 4, 5)
    out = random_hflip(x)
    flipped = [torch.equal(o, xi.flip(2)) for o, xi in zip(out, x)]
    kept = [torch.equal(o, xi) for o, xi in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 60 < sum(flipped) < 140


@pytest.mark.parametrize("name, expect_flips", [("cifar10", True), ("fashion-mnist", False)])
def test_standard_augment_uint8_to_float(name: str, expect_flips: bool) -> None:
    spec = get_dataset(name)
    c, h, w = spec.shape
    torch.manual_seed(0)
    images = torch.randint(1, 256, (40, c, h, w), dtype=torch.uint8)
    out = standard_augment(spec, images)
    assert out.dtype == torch.float32 and out.shape == images.shape
    assert out.min() >= 0 and out.max() <= 1
    as_float = images.float() / 255
    flips = 0
    for o, img in zip(out, as_float):
        if _window_index(o, img, spec.crop_padding) is None:
            assert _window_index(o, img.flip(2), spec.crop_padding) is not None
            flips += 1
    assert (flips > 0) == expect_flips
    assert spec.crop_padding == (4 if name == "cifar10" else 2)


def test_standard_augment_scales_exactly() -> None:
    spec = get_dataset("fashion-mnist")
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 1, 28, 28).contiguous()
    centre = standard_augment(spec, images)[:, 0, 14, 14]  # the centre survives a ±2 crop
    assert torch.equal(centre, torch.tensor([0.0, 0.2, 1.0]))


# ---------------------------------------------------------------- class-balanced subsets


def _labels(counts: list[int]) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return labels[torch.randperm(len(labels), generator=g)]


def test_per_class_indices_gives_exactly_k_each() -> None:
    labels = _labels([8, 9, 10])
    idx = per_class_indices(labels, 5, 3)
    assert torch.equal(torch.bincount(labels[idx], minlength=3), torch.tensor([5, 5, 5]))
    assert torch.equal(idx, per_class_indices(labels, 5, 3))  # deterministic
    later = per_class_indices(labels, 3, 3, skip=5)
    assert not set(idx.tolist()) & set(later.tolist())
    with pytest.raises(FairbenchError, match="class 0 has 8 examples"):
        per_class_indices(labels, 6, 3, skip=3)


def test_val_split_is_balanced_and_disjoint() -> None:
    labels = _labels([8, 9, 10])
    split = Split(torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1), labels)
    train, val = train_val_split(split, 3, train_per_class=4, val_per_class=2)
    assert val is not None
    assert torch.equal(torch.bincount(val.labels, minlength=3), torch.tensor([2, 2, 2]))
    assert torch.equal(torch.bincount(train.labels, minlength=3), torch.tensor([4, 4, 4]))
    assert not set(train.images.flatten().tolist()) & set(val.images.flatten().tolist())
    # without --train-per-class everything that is not validation trains, even for unequal classes
    rest, val = train_val_split(split, 3, train_per_class=None, val_per_class=2)
    assert torch.equal(torch.bincount(rest.labels, minlength=3), torch.tensor([6, 7, 8]))
    assert len(set(rest.images.flatten().tolist()) | set(val.images.flatten().tolist())) == len(split)
    whole, none = train_val_split(split, 3, None, None)
    assert none is None and len(whole) == len(split)
    with pytest.raises(FairbenchError, match="leaves no training examples"):
        train_val_split(split, 3, None, 8)
