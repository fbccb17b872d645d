"""The same numbers on a CUDA device. Skipped where there is none (CI has no GPU).

Training draws its data on the training device, so a CUDA run does not follow a CPU run's
random stream: these tests compare like with like (probes of one model and one probe set
on both devices; a CUDA pack against its members trained alone on CUDA).
"""

import math

import pandas as pd
import pytest
import torch

from phasemap import parse_config, train_pack
from phasemap.config import TaskSpec
from phasemap.models import StackedMLP
from phasemap.measure import CUDA_LOCKSTEP_EIG_BATCH, METRIC_COLUMNS, descending_eigvals, probe_stacked
from phasemap.data import Task

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def small(**train):
    return parse_config({
        "name": "cuda",
        "task": {"name": "fc1", "input_dim": 16, "teacher_width": 16},
        "model": {"depth": 3, "width": 32},
        "optimizer": {"name": "sgd", "lr": [0.05, 0.02], "momentum": 0.9, "weight_decay": [0.0, 1e-3]},
        "train": {"steps": 60, "batch_size": 32, "device": "cuda", "check_every": 10, **train},
        "probe": {"n_samples": 256, "steps": [20, 40]},
    })


def test_probes_on_cuda_equal_probes_on_cpu():
    model = StackedMLP([16, 32, 32, 32, 1], "relu", seeds=[0, 1, 2])
    task = Task(TaskSpec(name="fc1", input_dim=16, teacher_width=16))
    x, y = task.sample(512, torch.Generator().manual_seed(3))
    cpu_loss, cpu = probe_stacked(model, task, x, y, "centered", 1e-4)
    gpu_model = StackedMLP([16, 32, 32, 32, 1], "relu", seeds=[0, 1, 2]).cuda()
    gpu_task = Task(TaskSpec(name="fc1", input_dim=16, teacher_width=16), torch.device("cuda"))
    gpu_loss, gpu = probe_stacked(gpu_model, gpu_task, x.cuda(), y.cuda(), "centered", 1e-4)
    assert torch.allclose(gpu_loss.cpu(), cpu_loss, rtol=1e-4)
    for (mc, _), (mg, _) in zip(cpu, gpu):
        for col in METRIC_COLUMNS:
            a, b = mc[col].double(), mg[col].cpu().double()
            if col.startswith("pah_"):  # an eigenvalue right at the PAH floor may fall either side:
                stem = col.removesuffix("_r2").removesuffix("_n")  # compare fits of the same length
                same_n = mc[f"{stem}_n"].cpu() == mg[f"{stem}_n"].cpu()
                assert (mc[f"{stem}_n"].cpu() - mg[f"{stem}_n"].cpu()).abs().max() <= 1, col
                a, b = a[same_n], b[same_n]
            assert torch.equal(a.isnan(), b.isnan()), col
            ok = ~a.isnan()
            assert torch.allclose(a[ok], b[ok], rtol=1e-3, atol=1e-4), col


def test_a_cuda_pack_equals_its_members_trained_alone_on_cuda(tmp_path):
    pack = small()
    packed = train_pack(pack, root=str(tmp_path / "pack")).records
    cols = ["train_loss", "probe_loss"] + [c for c in METRIC_COLUMNS if not c.startswith("pah_")]
    for k, member in enumerate(pack.members):
        alone = train_pack(pack.member_config(member), root=str(tmp_path / f"alone{k}")).records
        mine = packed[packed["member"] == k].reset_index(drop=True)
        assert list(mine["step"]) == list(alone["step"])
        pd.testing.assert_frame_equal(mine[cols], alone[cols], rtol=1e-3, atol=1e-5)


def test_a_diverging_member_on_cuda_is_recorded_and_the_other_trains_on(tmp_path):
    cfg = parse_config({**small().to_dict(), "optimizer": {"name": "sgd", "lr": [0.05, 1e6]}})
    result = train_pack(cfg, root=str(tmp_path))
    assert result.status == ["ok", "diverged"]
    good = result.records[result.records["member"] == 0]
    assert good["step"].max() == 60 and math.isfinite(good["train_loss"].iloc[-1])


def test_large_cuda_batches_of_spectra_equal_lapack_on_the_cpu():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(CUDA_LOCKSTEP_EIG_BATCH + 1, 100, 300, generator=g)
    C = x @ x.transpose(1, 2) / 300
    C[3] = float("nan")  # a diverged member's matrix
    got = descending_eigvals(C.cuda()).cpu()
    ref = descending_eigvals(C)
    assert got[3].isnan().all() and ref[3].isnan().all()
    ok = torch.arange(len(C)) != 3
    assert torch.allclose(got[ok], ref[ok], atol=1e-5 * ref[ok].max().item())
