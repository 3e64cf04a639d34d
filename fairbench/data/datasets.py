"""Data sets held as uint8 tensors on the training device, with batched device-side augmentation.

What a data set is (`DatasetSpec`: classes, shape, threat defaults) and its registry are torch-free,
in `fairbench.specs.datasets` (re-exported here); this module loads and augments the images. Register a
data set with ``@register_dataset(name)`` on a function returning a `DatasetSpec` whose ``load``
returns a split's images and labels.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F

from fairbench.errors import FairbenchError
from fairbench.specs.datasets import (  # noqa: F401
    CIFAR10_CLASSES,
    CIFAR100_MEAN,
    CIFAR100_STD,
    CIFAR_MEAN,
    CIFAR_STD,
    DATASETS,
    FASHION_MNIST_CLASSES,
    DatasetSpec,
    get_dataset,
    register_dataset,
)

if TYPE_CHECKING:
    from fairbench.distributed import DistInfo

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass
class Split:
    """One split on the device: ``images`` uint8 N×C×H×W, ``labels`` int64 N."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: torch.Tensor) -> "Split":
        return Split(self.images[indices], self.labels[indices])

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))


def map_sharded(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    split: Split,
    dist: DistInfo,
    batch_size: int,
    indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """``fn(x, y) -> per-example tensor`` over ``split[indices]`` (default: all of it), images as floats
    in [0, 1], in batches of ``batch_size``; under DDP each rank takes a contiguous shard and every
    rank gets the whole result back, in the order of ``indices``.

    A rank with an empty shard (fewer examples than processes) still calls ``fn`` once, on an empty
    batch, so that its result has the dtype and trailing shape the other ranks gather.
    """
    if indices is None:
        indices = torch.arange(len(split), device=split.labels.device)
    shard = dist.shard_range(len(indices))
    starts = range(shard.start, shard.stop, batch_size) or [shard.start]
    outs = []
    for start in starts:
        idx = indices[start : min(start + batch_size, shard.stop)]
        outs.append(fn(to_float(split.images[idx]), split.labels[idx]))
    return dist.gather_shards(torch.cat(outs), len(indices))


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """``--data-dir``, else ``$FAIRBENCH_DATA``, else the user cache folder.

    One that exists but is not a folder is an error: the loaders would look past it and take
    another copy of the data set (Debian's, say) without a word.
    """
    if data_dir:
        root, name = Path(data_dir).expanduser(), "--data-dir"
    elif os.environ.get("FAIRBENCH_DATA"):
        root, name = Path(os.environ["FAIRBENCH_DATA"]).expanduser(), "$FAIRBENCH_DATA"
    else:
        cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root, name = Path(cache) / "fairbench" / "data", "the data folder"
    if root.exists() and not root.is_dir():
        raise FairbenchError(f"{name} {root} is not a folder")
    return root


def load_split(
    spec: DatasetSpec, split: str, data_dir: str | os.PathLike | None = None, download: bool = True
) -> Split:
    """Load a whole split as uint8 CPU tensors (move it with `Split.to`)."""
    load = spec.load or BUILTIN_LOADERS.get(spec.name)
    if load is None:
        raise FairbenchError(f"data set '{spec.name}' has no loader (its DatasetSpec needs load=...)")
    images, labels = load(split, data_root(data_dir), download)
    return Split(images.contiguous(), labels.long())


def load_splits(
    spec: DatasetSpec, names: tuple[str, ...], data_dir: str | os.PathLike | None, download: bool, dist: "DistInfo"
) -> list[Split]:
    """`load_split` for each name; under torchrun one process per machine may download, in turn.

    Rank 0 loads first (downloading what is missing), then local rank 0 of every other machine
    (whose data folder may be its own disk), then every other process, which never downloads: no
    two processes write the same folder at once. Each turn ends with a collective that also
    carries a failure, so an `error:` on the downloading rank stops every rank with that message.
    """
    if not dist.enabled:
        return [load_split(spec, name, data_dir, download) for name in names]
    turn = 0 if dist.is_main else 1 if dist.local_rank == 0 else 2
    splits: list[Split] = []
    for current in range(3):
        failure = None
        if turn == current:
            try:
                splits = [load_split(spec, name, data_dir, download and turn < 2) for name in names]
            except FairbenchError as exc:
                failure = str(exc)
        failures = [f for f in dist.all_gather_object(failure) if f is not None]
        if failures:
            raise FairbenchError(failures[0])
    return splits


def per_class_indices(labels: torch.Tensor, k: int, num_classes: int, skip: int = 0) -> torch.Tensor:
    """Indices of the first ``k`` examples of each class after skipping the first ``skip`` of each.

    Deterministic, so the same K gives the same subset on every machine.
    """
    out = []
    labels = labels.cpu()
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        if idx.numel() < skip + k:
            raise FairbenchError(f"class {c} has {idx.numel()} examples, fewer than the {skip + k} asked for")
        out.append(idx[skip : skip + k])
    return torch.sort(torch.cat(out)).values


def train_val_split(
    train: Split, num_classes: int, train_per_class: int | None, val_per_class: int | None
) -> tuple[Split, Split | None]:
    """Hold out the first ``val_per_class`` of each class as validation; the rest trains
    (or, with ``train_per_class``, the next ``train_per_class`` of each class)."""
    val_k = val_per_class or 0
    val_idx = per_class_indices(train.labels, val_k, num_classes) if val_k else None
    if train_per_class is not None:
        train_idx = per_class_indices(train.labels, train_per_class, num_classes, skip=val_k)
    elif val_idx is not None:
        counts = torch.bincount(train.labels.cpu(), minlength=num_classes)
        if int(counts.min()) <= val_k:
            raise FairbenchError(f"--val-per-class {val_k} leaves no training examples of class {int(counts.argmin())}")
        in_val = torch.zeros(len(train), dtype=torch.bool)
        in_val[val_idx] = True
        train_idx = torch.nonzero(~in_val).flatten()  # every other example, imbalanced or not
    else:
        train_idx = torch.arange(len(train))
    val = train.subset(val_idx) if val_idx is not None else None
    return train.subset(train_idx), val


# ---------------------------------------------------------------- augmentation (batched, on device)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [0, 1]."""
    return images.float().div_(255.0)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by ``padding`` and cut a random H×W window per example (one gather, no loop)."""
    if padding <= 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), device=x.device, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_hflip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def standard_augment(spec: DatasetSpec, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The data set's standard training augmentation on a uint8 batch; returns float in [0, 1]."""
    x = to_float(images)
    x = random_crop(x, spec.crop_padding, generator)
    if spec.hflip:
        x = random_hflip(x, generator)
    return x


# ---------------------------------------------------------------- loaders


def _missing(name: str, looked: list[Path], how: str) -> FairbenchError:
    places = "; ".join(str(p) for p in looked)
    return FairbenchError(f"{name} not found (looked in: {places}). {how}")


def _torchvision_cifar(cls_name: str, name: str):
    def load(split: str, root: Path, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        folder = root / cls.base_folder
        how = (
            f"Get it by running with network access (torchvision downloads it into {root}), or "
            f"put the extracted python-version archive ({cls.base_folder}/) in a folder and "
            f"pass it as --data-dir or $FAIRBENCH_DATA."
        )
        try:
            ds = cls(root=str(root), train=(split == "train"), download=download)
        except RuntimeError:  # torchvision: "Dataset not found or corrupted" (files or md5s)
            raise _missing(name, [folder], f"{how} (missing or corrupted files)") from None
        except OSError as exc:  # no network
            raise _missing(name, [folder], f"{how} (download failed: {exc})") from None
        images = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2)
        return images, torch.as_tensor(ds.targets, dtype=torch.long)

    return load


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, OSError, zlib.error) as exc:  # a cut or corrupt download, an unreadable file
        raise FairbenchError(f"cannot read {path}: {exc}; delete it to download it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise FairbenchError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise FairbenchError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {data.size}")
    return data.reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _fashion_mnist_folders(root: Path) -> list[Path]:
    return [root, root / "FashionMNIST" / "raw", root / "fashion-mnist", DEBIAN_FASHION_MNIST]


def _load_fashion_mnist(split: str, root: Path, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    img_stem, lbl_stem = FASHION_MNIST_FILES[split]
    folders = _fashion_mnist_folders(root)
    for folder in folders:
        img, lbl = _find_idx(folder, img_stem), _find_idx(folder, lbl_stem)
        if img and lbl:
            images, labels = read_idx(img), read_idx(lbl)
            return torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64))
    how = (
        "Install Debian's package (apt-get install dataset-fashion-mnist), or run with network "
        "access so torchvision downloads it, or put the idx files in --data-dir."
    )
    if not download:
        raise _missing("fashion-mnist", folders, how)
    import torchvision

    try:
        ds = torchvision.datasets.FashionMNIST(root=str(root), train=(split == "train"), download=True)
    except (RuntimeError, OSError) as exc:
        raise _missing("fashion-mnist", folders, f"{how} (download failed: {exc})") from None
    return ds.data[:, None].clone(), ds.targets.long()


# the built-in data sets' loaders (their metadata is torch-free, in `fairbench.specs.datasets`)
BUILTIN_LOADERS: dict[str, Callable[[str, Path, bool], tuple[torch.Tensor, torch.Tensor]]] = {
    "cifar10": _torchvision_cifar("CIFAR10", "cifar10"),
    "cifar100": _torchvision_cifar("CIFAR100", "cifar100"),
    "fashion-mnist": _load_fashion_mnist,
}
