"""Image data: each on-disk format round-trips through the readers; bad files name the path."""

import gzip
import pickle

import numpy as np
import pytest
import torch

from phasemap import ConfigError
from phasemap.data import load_images
from phasemap.data.images import augment, read_idx

rng = np.random.default_rng(0)


def _expected(x_train, x_test):
    """Scaled to [0, 1], standardised per channel with the training split's statistics."""
    xt, xh = torch.as_tensor(x_train / 255.0, dtype=torch.float32), torch.as_tensor(x_test / 255.0, dtype=torch.float32)
    mean, std = xt.mean((0, 2, 3), keepdim=True), xt.std((0, 2, 3), keepdim=True)
    return (xt - mean) / std, (xh - mean) / std


def test_cifar10_and_cifar100_pickle_batches_round_trip(tmp_path):
    images = rng.integers(0, 256, (12, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, 12).tolist()
    for i in range(5):  # two images per training batch, two held out
        with open(tmp_path / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump({b"data": images[2 * i:2 * i + 2], b"labels": labels[2 * i:2 * i + 2]}, f)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": images[10:], b"labels": labels[10:]}, f)
    data = load_images("cifar10", str(tmp_path))
    want_train, want_test = _expected(images[:10].reshape(-1, 3, 32, 32), images[10:].reshape(-1, 3, 32, 32))
    assert torch.allclose(data.x_train, want_train, atol=1e-5) and torch.allclose(data.x_test, want_test, atol=1e-5)
    assert data.y_train.tolist() == labels[:10] and data.y_test.tolist() == labels[10:] and data.shape == (3, 32, 32)

    c100 = tmp_path / "c100"
    c100.mkdir()
    fine = rng.integers(0, 100, 12).tolist()
    for name, part in (("train", slice(0, 10)), ("test", slice(10, 12))):
        with open(c100 / name, "wb") as f:
            pickle.dump({b"data": images[part], b"fine_labels": fine[part], b"coarse_labels": [0] * 2}, f)
    data = load_images("cifar100", str(c100))
    assert data.y_train.tolist() == fine[:10] and data.y_test.tolist() == fine[10:]


def _write_idx(path, array, gz):
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files_round_trip(tmp_path, gz):
    x_train, x_test = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8), rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    y_train, y_test = rng.integers(0, 10, 7).astype(np.uint8), rng.integers(0, 10, 3).astype(np.uint8)
    ext = ".gz" if gz else ""
    for stem, arr in (("train-images-idx3-ubyte", x_train), ("train-labels-idx1-ubyte", y_train),
                      ("t10k-images-idx3-ubyte", x_test), ("t10k-labels-idx1-ubyte", y_test)):
        _write_idx(tmp_path / (stem + ext), arr, gz)
    assert np.array_equal(read_idx(str(tmp_path / ("train-images-idx3-ubyte" + ext))), x_train)
    data = load_images("fashion_mnist", str(tmp_path))
    want_train, want_test = _expected(x_train[:, None], x_test[:, None])
    assert torch.allclose(data.x_train, want_train, atol=1e-5) and torch.allclose(data.x_test, want_test, atol=1e-5)
    assert data.y_train.tolist() == y_train.tolist() and data.y_test.tolist() == y_test.tolist()
    assert data.shape == (1, 28, 28) and data.n_classes == max(y_train.max(), y_test.max()) + 1


def test_npz_in_both_layouts_round_trips(tmp_path):
    x = rng.integers(0, 256, (20, 6, 6, 3), dtype=np.uint8)  # channels last
    y = rng.integers(0, 4, 20)
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    data = load_images("npz", str(tmp_path / "xy.npz"), held_out=5)
    want_train, want_test = _expected(x[:15].transpose(0, 3, 1, 2), x[15:].transpose(0, 3, 1, 2))
    assert torch.allclose(data.x_train, want_train, atol=1e-5) and torch.allclose(data.x_test, want_test, atol=1e-5)
    assert data.y_test.tolist() == y[15:].tolist() and data.shape == (3, 6, 6)
    np.savez(tmp_path / "split.npz", x_train=x[:15], y_train=y[:15], x_test=x[15:], y_test=y[15:])
    split = load_images("npz", str(tmp_path / "split.npz"))
    assert torch.equal(split.x_train, data.x_train) and torch.equal(split.y_test, data.y_test)


def test_missing_and_malformed_files_are_config_errors_naming_the_path(tmp_path):
    with pytest.raises(ConfigError, match="no such file or folder"):
        load_images("cifar10", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"the CIFAR folder holds data_batch_1.*missing .*data_batch_1"):
        load_images("cifar10", str(tmp_path))
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x05junk")
    for stem in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / stem).write_bytes(b"")
    with pytest.raises(ConfigError, match=f"a readable mnist dataset.*{tmp_path}"):
        load_images("mnist", str(tmp_path))
    np.savez(tmp_path / "bad.npz", images=np.zeros((3, 4, 4)))
    with pytest.raises(ConfigError, match=r"expected x_train, y_train, x_test, y_test or x, y"):
        load_images("npz", str(tmp_path / "bad.npz"))


def test_bundled_digits_and_augmentation():
    data = load_images("digits")
    assert data.x_train.shape == (1500, 1, 8, 8) and data.x_test.shape == (297, 1, 8, 8) and data.n_classes == 10
    assert abs(data.x_train.mean().item()) < 1e-5 and data.x_train.std().item() == pytest.approx(1.0, abs=1e-3)
    assert sorted(data.y_test.unique().tolist()) == list(range(10))
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    out = augment(x, torch.Generator().manual_seed(0), pad=1)
    assert out.shape == x.shape
    for img, src in zip(out, x):  # every output is a shifted, maybe flipped window of its own image
        padded = torch.nn.functional.pad(src, (1, 1, 1, 1))
        windows = [padded[:, i:i + 4, j:j + 4] for i in range(3) for j in range(3)]
        assert any(torch.equal(img, w) or torch.equal(img, w.flip(-1)) for w in windows)


def test_a_bad_data_file_stops_the_cli_before_anything_starts(tmp_path, capsys, monkeypatch):
    from phasemap.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.npz").write_text("not an npz")
    (tmp_path / "run.yaml").write_text("task: {name: npz, path: bad.npz}\nmodel: {family: cnn}\n")
    assert main(["run", "run.yaml", "--out", "results"]) == 2
    err = capsys.readouterr().err
    assert "task.path: `a readable npz dataset` must hold, but got 'bad.npz'" in err and "Traceback" not in err
    assert not (tmp_path / "results").exists()  # nothing started, nothing written
    sweep = "name: s\nbase: {task: {name: npz, path: bad.npz}, model: {family: cnn}}\naxes: {model.depth: [1, 2]}\n"
    (tmp_path / "sweep.yaml").write_text(sweep)
    assert main(["sweep", "sweep.yaml", "--out", "results"]) == 2
    assert "bad.npz" in capsys.readouterr().err and not (tmp_path / "results").exists()


def test_an_optuna_sweep_passes_the_data_check(tmp_path, capsys):
    from phasemap.cli import main

    sweep = ("name: o\nbase: {task: {name: digits}, model: {family: cnn}}\nsearch: {mode: optuna, trials: 2}\n"
             "axes: {optimizer.lr: {low: 0.001, high: 0.1}}\n")
    (tmp_path / "o.yaml").write_text(sweep)
    assert main(["validate", str(tmp_path / "o.yaml")]) == 0, capsys.readouterr().err
