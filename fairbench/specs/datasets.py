"""What the core needs to know of a data set, torch-free: classes, image shape, normalization,
threat defaults, augmentation, test-split size; and the data set registry (``DATASETS``,
``@register_dataset(name)``). The result schema and the report read these; the images are loaded
by `fairbench.data.datasets`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from fairbench.registry import Registry

if TYPE_CHECKING:
    from torch import Tensor


@dataclass(frozen=True)
class DatasetSpec:
    """What the core needs to know of a data set: shape, classes, threat defaults, augmentation."""

    name: str
    classes: tuple[str, ...]
    shape: tuple[int, int, int]  # C, H, W
    mean: tuple[float, ...]
    std: tuple[float, ...]
    eps: float  # default L-inf radius of the threat model
    step_size: float  # default PGD step size for training
    crop_padding: int
    hflip: bool
    # (split, root, download) -> (uint8 images N×C×H×W, int64 labels); None for a built-in data
    # set, whose loader is `fairbench.data.datasets.BUILTIN_LOADERS`'s
    load: Callable[[str, Path, bool], tuple[Tensor, Tensor]] | None = field(default=None, repr=False, compare=False)
    test_size: int | None = None  # images in the test split; bounds result files' image indices

    @property
    def num_classes(self) -> int:
        return len(self.classes)


DATASETS: Registry[Any] = Registry("dataset")
register_dataset = DATASETS.register


def get_dataset(name: str) -> DatasetSpec:
    return DATASETS.get(name)()


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_MNIST_CLASSES = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


def _cifar100_classes() -> tuple[str, ...]:
    from fairbench.specs._cifar100_names import CIFAR100_CLASSES

    return CIFAR100_CLASSES


@register_dataset("cifar10")
def cifar10() -> DatasetSpec:
    """CIFAR-10 (Krizhevsky 2009), 32x32 RGB, 10 classes; the FairAT paper's data set."""
    return DatasetSpec(
        "cifar10",
        CIFAR10_CLASSES,
        (3, 32, 32),
        CIFAR_MEAN,
        CIFAR_STD,
        eps=8 / 255,
        step_size=2 / 255,
        crop_padding=4,
        hflip=True,
        test_size=10_000,
    )


@register_dataset("cifar100")
def cifar100() -> DatasetSpec:
    """CIFAR-100 (Krizhevsky 2009), 32x32 RGB, 100 fine classes."""
    return DatasetSpec(
        "cifar100",
        _cifar100_classes(),
        (3, 32, 32),
        CIFAR100_MEAN,
        CIFAR100_STD,
        eps=8 / 255,
        step_size=2 / 255,
        crop_padding=4,
        hflip=True,
        test_size=10_000,
    )


@register_dataset("fashion-mnist")
def fashion_mnist() -> DatasetSpec:
    """Fashion-MNIST (Xiao et al. 2017), 28x28 grey, 10 classes; 'shirt' is the hard class."""
    return DatasetSpec(
        "fashion-mnist",
        FASHION_MNIST_CLASSES,
        (1, 28, 28),
        (0.2860,),
        (0.3530,),
        eps=0.1,
        step_size=0.025,
        crop_padding=2,
        hflip=False,
        test_size=10_000,
    )
