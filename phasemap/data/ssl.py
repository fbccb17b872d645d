"""Self-supervised learning on images: SimCLR (Chen et al. 2020), the paper's res2 setting.

A training batch of n images is 2n views: two augmentations of each (`views`: a random
resized crop with a random horizontal flip, as one affine resampling per view, and for RGB
colour jitter of brightness, contrast and saturation), on the task's device. The loss is
InfoNCE (`info_nce`): view i's positive is the other view of its image, its negatives the
other 2n - 2 views, cosine similarities over `temperature`.

Probes measure held-out images without augmentation. InfoNCE needs a pair per image, so the
probe set is the images twice (each its own positive): a duplicated sample changes no
covariance (H, G and the neural-collapse means are averages over samples), and the
gradient g of a sample is that of the loss its pair defines. `probe_accuracy` is a
linear classifier's on the backbone's embedding (`linear_probe`: ridge regression onto
one-hot labels, fitted on n training images, scored on the held-out ones); `train_accuracy`
is NaN (its score on the images it was fitted to measures the fit, not learning).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from .classification import HeldOutTask
from .images import ImageTask

CROP_SCALE = (0.25, 1.0)  # share of the image's area a crop keeps (SimCLR: 0.08-1; small images lose too much)
CROP_RATIO = (3 / 4, 4 / 3)  # its aspect ratio
JITTER = 0.4  # brightness, contrast and saturation factors in [1 - 0.4, 1 + 0.4] (SimCLR's strength 0.5)
JITTER_P = 0.8  # share of views jittered
RIDGE = 1e-3  # linear_probe's ridge, relative to the mean eigenvalue of the features' covariance


def views(x: torch.Tensor, generator: torch.Generator, mean: torch.Tensor | None = None,
          std: torch.Tensor | None = None) -> torch.Tensor:
    """One augmented view of each image of x (N, C, H, W), drawn per image: a crop of a random
    share of the area and aspect ratio, resized back to H x W (bilinear), flipped
    horizontally half of the time; colour jitter where C = 3, on the pixels (x * std + mean,
    in [0, 1]; standardised again after), given the standardisation's `mean` and `std`."""
    N, C, H, W = x.shape
    dev = x.device

    def uniform(low, high):
        return low + (high - low) * torch.rand(N, generator=generator, device=dev)

    area = uniform(*CROP_SCALE)
    ratio = torch.exp(uniform(*(torch.log(torch.tensor(CROP_RATIO)).tolist())))
    sx = torch.sqrt(area * ratio).clamp(max=1.0)  # the crop's width and height as shares of the image's
    sy = torch.sqrt(area / ratio).clamp(max=1.0)
    tx, ty = (1 - sx) * uniform(-1, 1), (1 - sy) * uniform(-1, 1)  # its centre, inside the image
    flip = torch.where(torch.rand(N, generator=generator, device=dev) < 0.5, -1.0, 1.0)
    theta = torch.zeros(N, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = sx * flip, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    grid = F.affine_grid(theta, (N, C, H, W), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if C == 3 and mean is not None:
        out = (jitter(out * std + mean, generator) - mean) / std
    return out


def jitter(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Colour jitter of RGB pixels in [0, 1] (N, 3, H, W), as torchvision's ColorJitter does
    without hue: brightness (scale), contrast (blend with the image's mean grey) and saturation
    (blend with each pixel's grey), each by a factor in [1 - JITTER, 1 + JITTER] for a random
    JITTER_P of the images, clamped to [0, 1] after each."""
    N = pixels.shape[0]
    weights = torch.tensor([0.299, 0.587, 0.114], device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)

    def factor():
        f = 1 + JITTER * (2 * torch.rand(N, 1, 1, 1, generator=generator, device=pixels.device) - 1)
        on = torch.rand(N, 1, 1, 1, generator=generator, device=pixels.device) < JITTER_P
        return torch.where(on, f, torch.ones_like(f))

    x = (pixels * factor()).clamp(0, 1)
    grey = (x * weights).sum(1, keepdim=True)
    x = (grey.mean((2, 3), keepdim=True) + factor() * (x - grey.mean((2, 3), keepdim=True))).clamp(0, 1)
    grey = (x * weights).sum(1, keepdim=True)
    return (grey + factor() * (x - grey)).clamp(0, 1)


def info_nce(out: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE of projections out (..., 2n, P) whose view i pairs with view (i + n) mod 2n: per
    view, -log of the softmax over the other 2n - 1 views of its positive's cosine similarity
    over `temperature`. One loss per view (..., 2n)."""
    z = F.normalize(out, dim=-1)
    sim = (z @ z.transpose(-1, -2)) / temperature  # (..., 2n, 2n)
    N = sim.shape[-1]
    eye = torch.eye(N, dtype=torch.bool, device=sim.device)
    sim = sim.masked_fill(eye, float("-inf"))  # a view is not its own negative
    positive = (torch.arange(N, device=sim.device) + N // 2) % N
    return -torch.log_softmax(sim, dim=-1)[..., torch.arange(N, device=sim.device), positive]


def linear_probe(z_train: torch.Tensor, y_train: torch.Tensor, z_test: torch.Tensor, y_test: torch.Tensor,
                 n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) accuracy (K,) of a linear classifier per member: ridge regression of one-hot
    labels on the embeddings z_train (K, n, d) (standardised with the training mean and std, a
    bias), scored on z_train and z_test (K, m, d). Deterministic: no training loop to tune."""
    z_train, z_test = z_train.double(), z_test.double()
    mean, std = z_train.mean(1, keepdim=True), z_train.std(1, keepdim=True).clamp_min(1e-8)

    def features(z):
        z = (z - mean) / std
        return torch.cat([z, torch.ones_like(z[..., :1])], -1)

    A = features(z_train)  # (K, n, d + 1)
    Y = F.one_hot(y_train, n_classes).double().expand(A.shape[0], -1, -1)
    gram = A.transpose(-1, -2) @ A
    d = gram.shape[-1]
    ridge = RIDGE * gram.diagonal(dim1=-2, dim2=-1).mean(-1)[:, None, None] * torch.eye(d, dtype=gram.dtype, device=gram.device)
    weights = torch.linalg.solve(gram + ridge, A.transpose(-1, -2) @ Y)  # (K, d + 1, classes)

    def score(z, y):
        return ((features(z) @ weights).argmax(-1) == y).double().mean(-1).float()

    return score(z_train, y_train), score(z_test, y_test)


class SSLTask(ImageTask):
    """SimCLR on the images of `task.data` as the training loop sees a task: batches of two
    views per image, InfoNCE, the projection head's width as the output; labels kept for the
    neural-collapse columns and the linear probe (`n_classes`: the images' classes)."""

    def __init__(self, spec, device: torch.device | str = "cpu"):
        super().__init__(dataclasses.replace(spec, name=spec.data), device)
        self.spec = spec
        self.n_classes = self.output_dim  # the images' classes
        self.output_dim = spec.projection_dim

    def sample(self, n: int, generator: torch.Generator):
        """Two views of each of `n` training images drawn with replacement: x (2n, C, H, W),
        views [v1 of every image, v2 of every image]; y their labels. (`task.augment`'s crop
        and flip are not applied: the views are SimCLR's own.)"""
        x, y = HeldOutTask.sample(self, n, generator)
        v1, v2 = (views(x, generator, self.mean, self.std) for _ in range(2))
        return torch.cat([v1, v2]), torch.cat([y, y])

    def accuracies(self, embed, train_set, probe_set) -> tuple[list[float], list[float]]:
        """(train, probe) accuracy per member: train NaN, probe the held-out accuracy of
        `linear_probe` fitted on the embeddings `embed(x)` (K, N, d) of the training images
        `train_set`, scored on the probe set's held-out images (once each); NaN for a member whose
        embeddings are not finite (diverged). The classifier's accuracy on the images it was
        fitted to says little (a fit of n samples in d dimensions: 0.87 on random features of
        297 images in 128 dimensions), so no train accuracy is recorded."""
        (x_train, y_train), (x, y) = train_set, probe_set
        n = len(x) // 2  # the probe set is the images twice
        z_train, z_probe = embed(x_train), embed(x[:n])
        finite = torch.isfinite(z_train).flatten(1).all(1) & torch.isfinite(z_probe).flatten(1).all(1)
        keep = finite[:, None, None]  # a diverged member's zeros: a solvable system, its accuracy NaN below
        _, probe = linear_probe(torch.where(keep, z_train, 0.0), y_train, torch.where(keep, z_probe, 0.0), y[:n],
                                self.n_classes)
        probe = torch.where(finite.cpu(), probe.cpu(), torch.tensor(float("nan")))
        return [math.nan] * len(probe), probe.tolist()

    def probe_set(self, n: int, generator: torch.Generator | None = None):
        """The first `n` held-out images, twice (each view its image's positive; see above)."""
        x, y = super().probe_set(n, generator)
        return torch.cat([x, x]), torch.cat([y, y])

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return info_nce(out, self.spec.temperature)
