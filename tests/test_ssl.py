"""task ssl (SimCLR, the paper's res2): InfoNCE, the views, the linear probe and the backbone/head
split by value; a run's records; the configs refused."""

import math

import pytest
import torch

from phasemap.config import ConfigError, parse_config
from phasemap.data import make_task
from phasemap.data import ssl as ssl_data
from phasemap.data.ssl import info_nce, linear_probe, views
from phasemap.measure import describe_layers
from phasemap.models import SimCLR, build_model
from phasemap.train import train_pack


def config(root=None, **over):
    data = {"name": "ssl", "task": {"name": "ssl", "data": "digits", "projection_dim": 16, "temperature": 0.5},
            "model": {"family": "cnn", "depth": 2, "width": 8},
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": [0.0, 1e-3]},
            "train": {"steps": 20, "batch_size": 32, "check_every": 10},
            "probe": {"n_samples": 64, "count": 1, "null_samples": 0}}
    if root is not None:
        data["storage"] = {"root": str(root), "sweep_id": "t"}
    for path, value in over.items():
        section, key = path.split(".")
        data[section][key] = value
    return parse_config(data)


def test_info_nce_by_hand():
    """Two images whose views point the same way, orthogonal to the other image's: each view's
    positive has cosine 1, its two negatives 0: loss = -log(e^(1/T) / (e^(1/T) + 2))."""
    T = 0.5
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 2.0, 0.0])
    out = torch.stack([a, b, 3 * a, b / 2])  # views [v1 of 0, v1 of 1, v2 of 0, v2 of 1]
    want = -math.log(math.exp(1 / T) / (math.exp(1 / T) + 2))
    assert info_nce(out, T).tolist() == pytest.approx([want] * 4)
    # the positive opposite (cosine -1), the negatives orthogonal: -log(e^(-1/T) / (e^(-1/T) + 2))
    flipped = torch.stack([a, b, -a, -b])
    assert info_nce(flipped, T).tolist() == pytest.approx([-math.log(math.exp(-2) / (math.exp(-2) + 2))] * 4)
    # a pack's leading K: per member, the same as alone
    pack = torch.stack([out, flipped])
    assert torch.allclose(info_nce(pack, T), torch.stack([info_nce(out, T), info_nce(flipped, T)]))


def test_views_crop_resize_and_flip_as_built(monkeypatch):
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    monkeypatch.setattr(ssl_data, "CROP_SCALE", (1.0, 1.0))
    monkeypatch.setattr(ssl_data, "CROP_RATIO", (1.0, 1.0))
    g = torch.Generator().manual_seed(0)
    out = views(x, g)  # the whole image, resized to itself: the image or its mirror
    for i in range(2):
        assert torch.allclose(out[i], x[i], atol=1e-5) or torch.allclose(out[i], x[i].flip(-1), atol=1e-5)
    flips = [bool(torch.allclose(v, xi.flip(-1), atol=1e-5)) for v, xi in zip(views(x.repeat(50, 1, 1, 1), g),
                                                                              x.repeat(50, 1, 1, 1))]
    assert 30 < sum(flips) < 70  # half of them mirrored
    monkeypatch.undo()
    crops = views(x.repeat(8, 1, 1, 1), torch.Generator().manual_seed(1))
    assert crops.shape == (16, 1, 4, 4) and not torch.allclose(crops[0], crops[2])  # each image its own crop
    rgb = torch.randn(4, 3, 8, 8)
    assert views(rgb, torch.Generator().manual_seed(0)).shape == rgb.shape  # colour jitter on RGB


def test_linear_probe_separates_what_is_separable_and_not_noise():
    g = torch.Generator().manual_seed(0)
    y_train, y_test = torch.arange(200) % 5, torch.arange(100) % 5
    centres = 4 * torch.randn(5, 12, generator=g)
    z_train = (centres[y_train] + torch.randn(200, 12, generator=g)).expand(2, -1, -1)
    z_test = (centres[y_test] + torch.randn(100, 12, generator=g)).expand(2, -1, -1)
    train, test = linear_probe(z_train, y_train, z_test, y_test, 5)
    assert train.tolist() == [1.0, 1.0] and test.tolist() == [1.0, 1.0]
    noise = torch.randn(1, 100, 12, generator=g)
    _, chance = linear_probe(torch.randn(1, 200, 12, generator=g), y_train, noise, y_test, 5)
    assert chance.item() < 0.4  # labels unrelated to the features: about 1/5


def test_the_task_gives_two_views_and_the_probe_set_twice():
    cfg = config()
    task = make_task(cfg.task)
    x, y = task.sample(8, torch.Generator().manual_seed(0))
    assert x.shape == (16, 1, 8, 8) and torch.equal(y[:8], y[8:])
    assert not torch.allclose(x[:8], x[8:])  # two different views of the same images
    xp, yp = task.probe_set(64)
    assert xp.shape[0] == 128 and torch.equal(xp[:64], xp[64:]) and torch.equal(xp[:64], task.x_test[:64])
    assert task.output_dim == 16 and task.n_classes == 10 and task.classification


@pytest.mark.parametrize("family,depth,embedding", [("cnn", 2, 4 * 8), ("resnet", 8, 64 * 8)])
def test_backbone_and_projection_head(family, depth, embedding):
    cfg = config(**{"model.family": family, "model.depth": depth})
    model, _ = build_model(cfg.model, (1, 8, 8), 16, [0, 1], ssl=True)
    x = torch.randn(5, 1, 8, 8)
    model.eval()
    assert model(x).shape == (2, 5, 16) and model(x, embed=True).shape == (2, 5, embedding)
    member = model.member(0).eval()  # BatchNorm: running statistics, as the pack in eval mode
    assert isinstance(member, SimCLR)
    assert torch.allclose(member.head(member.backbone(x)), model(x)[0], atol=1e-5)
    names = [row[0] for row in describe_layers(member, False)]
    assert names[-2:] == ["head.fc1", "head.fc2"] and names[0].startswith("backbone.")


def test_an_ssl_run_records_every_layer_with_labels_and_a_linear_probe(tmp_path):
    result = train_pack(config(tmp_path))
    rows = result.records
    assert set(rows["status"]) == {"ok"} and rows["train_loss"].notna().all()
    # InfoNCE at initialisation: about log(2n - 1) for a batch of n images (2n views)
    first = rows[rows["step"] == 0]
    assert first["train_loss"].iloc[0] == pytest.approx(math.log(63), abs=0.2)
    assert first["probe_loss"].iloc[0] == pytest.approx(math.log(127), abs=0.2)
    assert rows["probe_accuracy"].between(0.2, 1).all() and rows["train_accuracy"].isna().all()
    head = rows[rows["layer_name"] == "head.fc1"]
    assert head["nc1"].notna().all() and (head["dim_in"] == 32).all()  # NC on the embedding, with the labels
    assert set(rows["layer_name"]) == {"backbone.conv1", "backbone.conv2", "head.fc1", "head.fc2"}
    assert set(rows["ssl_data"]) == {"digits"} and set(rows["projection_dim"]) == {16}
    assert set(rows["temperature"]) == {0.5} and (rows["output_dim"] == 16).all()


@pytest.mark.parametrize("over,field", [
    ({"model.family": "mlp"}, "model.family"),
    ({"task.projection_dim": 1}, "task.projection_dim"),
    ({"task.temperature": 0.0}, "task.temperature"),
    ({"task.data": "fc1"}, "task.data"),
    ({"task.data": "cifar10"}, "task.path"),
])
def test_refused_configs_name_the_field(over, field):
    with pytest.raises(ConfigError) as e:
        config(**over)
    assert field in str(e.value)


def test_colour_jitter_acts_on_pixels_as_torchvision_would():
    """Black stays black (brightness scales, contrast and saturation blend with greys that are
    black), through the standardisation too; a grey image stays grey; every value stays in [0, 1]."""
    g = torch.Generator().manual_seed(0)
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    black = (torch.zeros(16, 3, 4, 4) - mean) / std  # standardised black images
    assert torch.allclose(views(black, g, mean, std), black, atol=1e-5)
    grey = ssl_data.jitter(torch.full((16, 3, 4, 4), 0.9), g)
    assert torch.allclose(grey, grey[:, :1].expand_as(grey)) and 0 <= grey.min() and grey.max() <= 1
    assert len({round(v, 4) for v in grey[:, 0, 0, 0].tolist()}) > 4  # brightness and contrast vary per image
    noisy = ssl_data.jitter(torch.rand(64, 3, 4, 4, generator=g), g)
    assert 0 <= noisy.min() and noisy.max() <= 1
