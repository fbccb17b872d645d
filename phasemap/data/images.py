"""Real image classification data: read from local files, or bundled with a registry package.

Nothing is downloaded. Sources (`task.name`, and `task.path` for files on disk):
- `digits`: scikit-learn's bundled digits (1,797 8x8 grey images, 10 classes, values 0-16);
  the last 297 (every class ~30 times) are held out.
- `cifar10`, `cifar100`: the python pickle batches, a folder holding `data_batch_1..5` and
  `test_batch` (CIFAR-10) or `train` and `test` (CIFAR-100, fine labels), as the archives unpack.
- `mnist`, `fashion_mnist`: the IDX files in a folder (`train-images-idx3-ubyte`,
  `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each
  optionally `.gz`).
- `npz`: a NumPy `.npz` with `x_train, y_train, x_test, y_test`, or `x, y` (the last
  `held_out` samples held out); x as (N, H, W) or (N, C, H, W) (or (N, H, W, C) with C <= 4).

Images become float32 (N, C, H, W), scaled to [0, 1] then standardised per channel with the
training split's mean and standard deviation. A missing or malformed file is a `ConfigError`
naming the path.
"""

from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch

from ..config import ConfigError
from .classification import HeldOutTask

IMAGE_TASKS = ("digits", "cifar10", "cifar100", "mnist", "fashion_mnist", "npz")
FILE_TASKS = IMAGE_TASKS[1:]


@dataclass
class Images:
    """A train and a held-out split: x (N, C, H, W) float32 standardised, y (N,) int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    # the standardisation: x = (pixels in [0, 1] - mean) / std, per channel, (1, C, 1, 1)
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])


def load_images(name: str, path: str = "", held_out: int = 297) -> Images:
    """The named dataset as `Images` (see the module docstring)."""
    if name == "digits":
        x, y = _digits()
        return _standardised(x[:-held_out], y[:-held_out], x[-held_out:], y[-held_out:], 16.0)
    if not path:
        raise ConfigError([f"task.path: `the data's file or folder for task {name}` must be given, but got ''"])
    if not os.path.exists(path):
        raise ConfigError([f"task.path: `path exists` must hold, but got {path!r} (no such file or folder)"])
    try:
        if name in ("cifar10", "cifar100"):
            return _standardised(*read_cifar(path, fine=name == "cifar100"), 255.0)
        if name in ("mnist", "fashion_mnist"):
            return _standardised(*read_mnist(path), 255.0)
        return read_npz(path, held_out)
    except ConfigError:
        raise
    except (OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as e:
        raise ConfigError([f"task.path: `a readable {name} dataset` must hold, but got {path!r} "
                           f"({type(e).__name__}: {e})"]) from e


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled in the wheel: no download

    d = load_digits()
    return d.images[:, None].astype(np.float32), d.target.astype(np.int64)


def read_cifar(folder: str, fine: bool = False):
    """(x_train, y_train, x_test, y_test) as uint8 (N, 3, 32, 32) and int64 from the pickle batches."""
    if fine:
        train_files, test_files, key = ["train"], ["test"], b"fine_labels"
    else:
        train_files, test_files, key = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"

    def read(files):
        xs, ys = [], []
        for f in files:
            full = os.path.join(folder, f)
            if not os.path.exists(full):
                raise ConfigError([f"task.path: `the CIFAR folder holds {f}` must hold, but got {folder!r} "
                                   f"(missing {full})"])
            with open(full, "rb") as fh:
                batch = pickle.load(fh, encoding="bytes")
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3072:
                raise ValueError(f"{full}: data of shape {data.shape}, expected (N, 3072)")
            xs.append(data.reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[key], dtype=np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    return (*read(train_files), *read(test_files))


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """One IDX file (optionally gzipped) as an array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {data.size} values, the header says {dims}")
    return data.reshape(dims)


def read_mnist(folder: str):
    """(x_train, y_train, x_test, y_test) from the four IDX files of MNIST or Fashion-MNIST."""
    arrays = []
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        found = [os.path.join(folder, stem + ext) for ext in ("", ".gz")
                 if os.path.exists(os.path.join(folder, stem + ext))]
        if not found:
            raise ConfigError([f"task.path: `the MNIST folder holds {stem}[.gz]` must hold, but got {folder!r}"])
        arrays.append(read_idx(found[0]))
    x_train, y_train, x_test, y_test = arrays
    return x_train[:, None], y_train.astype(np.int64), x_test[:, None], y_test.astype(np.int64)


def read_npz(path: str, held_out: int = 297) -> Images:
    """An .npz with x_train/y_train/x_test/y_test or x/y (see the module docstring)."""
    with np.load(path) as f:
        keys = set(f.files)
        if {"x_train", "y_train", "x_test", "y_test"} <= keys:
            x_train, y_train, x_test, y_test = (f[k] for k in ("x_train", "y_train", "x_test", "y_test"))
        elif {"x", "y"} <= keys:
            x, y = f["x"], f["y"]
            if not 0 < held_out < len(x):
                raise ValueError(f"task.held_out = {held_out} must be in (0, {len(x)})")
            x_train, y_train, x_test, y_test = x[:-held_out], y[:-held_out], x[-held_out:], y[-held_out:]
        else:
            raise KeyError(f"arrays {sorted(keys)}; expected x_train, y_train, x_test, y_test or x, y")
    x_train, x_test = _channels_first(x_train), _channels_first(x_test)
    scale = 255.0 if x_train.dtype == np.uint8 else 1.0
    return _standardised(x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64), scale)


def _channels_first(x: np.ndarray) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[-1] <= 4 < x.shape[1]:  # (N, H, W, C)
        return x.transpose(0, 3, 1, 2)
    if x.ndim != 4:
        raise ValueError(f"images of shape {x.shape}, expected (N, H, W) or (N, C, H, W)")
    return x


def _standardised(x_train, y_train, x_test, y_test, scale: float) -> Images:
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise ValueError(f"{len(x_train)} train images for {len(y_train)} labels, "
                         f"{len(x_test)} held-out images for {len(y_test)} labels")
    xt = torch.as_tensor(np.asarray(x_train, dtype=np.float32) / scale)
    xh = torch.as_tensor(np.asarray(x_test, dtype=np.float32) / scale)
    mean = xt.mean((0, 2, 3), keepdim=True)
    std = xt.std((0, 2, 3), keepdim=True).clamp_min(1e-6)
    y_train, y_test = torch.as_tensor(np.asarray(y_train)), torch.as_tensor(np.asarray(y_test))
    if (len(y_train) and int(y_train.min()) < 0) or (len(y_test) and int(y_test.min()) < 0):
        raise ValueError("negative class labels")
    n_classes = int(max(y_train.max(), y_test.max() if len(y_test) else 0)) + 1
    return Images((xt - mean) / std, y_train.long(), (xh - mean) / std, y_test.long(), n_classes, mean, std)


def check_classes(spec, data: Images) -> int:
    """The number of classes the network outputs; a `ConfigError` if a label is not below it.
    npz: classes as configured (task.n_classes); the others have theirs."""
    n_out = spec.n_classes if spec.name == "npz" else {"cifar100": 100}.get(spec.name, 10)
    if data.n_classes > n_out:
        raise ConfigError([f"task.n_classes: `labels < {n_out}` must hold for {spec.name}, but got "
                           f"label {data.n_classes - 1} in {spec.path or spec.name!r}"])
    return n_out


class ImageTask(HeldOutTask):
    """Image classification as the training loop sees a task: batches drawn from the train
    split (augmented if `task.augment`), probes on the held-out split."""

    def __init__(self, spec, device: torch.device | str = "cpu"):
        self.spec = spec
        self.device = torch.device(device)
        data = load_images(spec.name, spec.path, spec.held_out)
        self.x_train, self.y_train = data.x_train.to(self.device), data.y_train.to(self.device)
        self.x_test, self.y_test = data.x_test.to(self.device), data.y_test.to(self.device)
        self.mean, self.std = data.mean.to(self.device), data.std.to(self.device)  # pixels = x * std + mean
        self.output_dim = check_classes(spec, data)
        self.input_shape = data.shape

    def sample(self, n: int, generator: torch.Generator):
        x, y = super().sample(n, generator)
        return (augment(x, generator) if self.spec.augment else x), y


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after zero padding by `pad` and a random horizontal flip, per image, on x's
    device (x (N, C, H, W))."""
    N, _, H, W = x.shape
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    dy = torch.randint(2 * pad + 1, (N,), generator=generator, device=x.device)
    dx = torch.randint(2 * pad + 1, (N,), generator=generator, device=x.device)
    rows = (dy[:, None] + torch.arange(H, device=x.device))[:, None, :, None]  # (N, 1, H, 1)
    cols = (dx[:, None] + torch.arange(W, device=x.device))[:, None, None, :]  # (N, 1, 1, W)
    n = torch.arange(N, device=x.device)[:, None, None, None]
    c = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    out = padded[n, c, rows, cols]
    flip = torch.rand(N, generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)
