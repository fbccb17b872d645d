"""Transformers in the packed engine on modular arithmetic, and learning phases."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from packs import assert_members_equal_alone
from phasemap import ConfigError, parse_config, train_pack
from phasemap.analysis.aggregate import learning_phase_grid, learning_phases
from phasemap.data.modular import modular_table
from phasemap.measure import BASELINE_COLUMNS, METRIC_COLUMNS
from phasemap.measure.phases import learning_outcome


def test_learning_outcomes_by_construction():
    steps = [0, 10, 100, 1000, 10000]
    # both cross at probe 100, but train may have crossed at 11 (then held-out at 100 is 9x later)
    assert learning_outcome(steps, [0, .5, .95, 1, 1], [0, .4, .92, .95, .96]) == ("unresolved", 100, 100)
    # a probe at 99 brackets train's crossing to (99, 100]: held-out by 100 <= 2 x 100 is comprehension
    assert learning_outcome([0, 99, 100, 1000, 10000], [0, .5, .95, 1, 1], [0, .4, .92, .95, .96]) == (
        "comprehension", 100, 100)
    outcome, t_train, t_test = learning_outcome(steps, [0, .95, 1, 1, 1], [0, .1, .1, .2, .93])
    assert (outcome, t_train, t_test, t_test - t_train) == ("grokking", 10, 10000, 9990)
    outcome, t_train, t_test = learning_outcome(steps, [0, .95, 1, 1, 1], [0, .1, .1, .2, .3])
    assert outcome == "memorisation" and t_train == 10 and math.isnan(t_test)
    assert learning_outcome(steps, [0, .1, .2, .3, .5], [0, 0, 0, 0, 0])[0] == "confusion"
    # `soon`: held-out at twice the train step is still comprehension by default, not at 3x
    # (train probed at 9 and 10: it crossed at 10)
    assert learning_outcome([0, 9, 10, 20], [0, 0, 1, 1], [0, 0, 0, 1])[0] == "comprehension"
    assert learning_outcome([0, 9, 10, 20, 30], [0, 0, 1, 1, 1], [0, 0, 0, 0, 1])[0] == "grokking"  # in (20, 30]
    assert learning_outcome([0, 9, 10, 30], [0, 0, 1, 1], [0, 0, 0, 1])[0] == "unresolved"  # (10, 30] straddles 20
    assert learning_outcome([0, 9, 10, 30], [0, 0, 1, 1], [0, 0, 0, 1], soon=3)[0] == "comprehension"
    # train probed only at 0 and 10 crossed in (0, 10]: held-out by 20 is not known to be soon
    assert learning_outcome([0, 10, 20], [0, 1, 1], [0, 0, 1])[0] == "unresolved"
    assert learning_outcome([0, 10, 20, 30], [0, 1, 1, 1], [0, 0, 0, 1])[0] == "grokking"  # 21 > 2 x 10


@pytest.mark.parametrize("op, f", [("add", lambda a, b, p: (a + b) % p), ("sub", lambda a, b, p: (a - b) % p),
                                   ("mul", lambda a, b, p: (a * b) % p), ("div", lambda a, b, p: (a * pow(b, -1, p)) % p)])
def test_modular_tables_are_right(op, f):
    seq, c = modular_table(7, op)
    assert len(seq) == (42 if op == "div" else 49)
    for (a, o, b, eq), label in zip(seq.tolist(), c.tolist()):
        assert (o, eq) == (7, 8) and label == f(a, b, 7)


def _grok(**over):
    data = {"name": "t", "task": {"name": "modular", "modulus": 7, "train_fraction": 0.6},
            "model": {"family": "transformer", "depth": 1, "width": 8, "heads": 2},
            "optimizer": {"name": "adamw", "lr": 3e-3, "weight_decay": [0.0, 1.0]},
            "train": {"steps": 10, "batch_size": 16, "seed": [0, 1], "check_every": 5},
            "probe": {"n_samples": 19, "steps": [0, 5, 10]}}
    for key, value in over.items():
        section, field = key.split("__")
        data[section][field] = value
    return parse_config(data)


def test_a_packed_transformer_equals_its_members_trained_alone(tmp_path):
    pack = _grok()
    packed = assert_members_equal_alone(pack, tmp_path, atol=1e-5, paired_tol=1e-3)
    names = packed[(packed["member"] == 0) & (packed["step"] == 10)]["layer_name"].tolist()
    assert names == ["block1.attn.q_proj", "block1.attn.k_proj", "block1.attn.v_proj", "block1.attn.out_proj",
                     "block1.mlp_in", "block1.mlp_out", "unembed"]
    assert set(packed["layer_kind"]) == {"attention.q", "attention.k", "attention.v", "attention.out", "linear"}
    # the split: 60% of the 49 pairs trained on, the rest held out for probes (19 of them here)
    assert packed["train_accuracy"].between(0, 1).all() and packed["probe_accuracy"].between(0, 1).all()


def test_run_prints_whole_layers_once_with_per_head(tmp_path, capsys):
    """`phasemap run`'s summary: one row per member and layer (the per-head rows of q/k/v, which
    share their layer's index, left out), and its critical depth over hidden layers 1..n_layers-1."""
    import pyarrow.parquet as pq
    import yaml

    from phasemap.cli import main

    data = json.loads(json.dumps(_grok(probe__per_head=True).to_dict(), default=list))
    data["storage"] = {"root": str(tmp_path / "out"), "sweep_id": "ph"}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(data))
    assert main(["run", str(tmp_path / "g.yaml"), "--no-progress"]) == 0
    out = capsys.readouterr().out.splitlines()
    top = next(i for i, line in enumerate(out) if line.split()[:2] == ["member", "lr"])
    end = out.index("", top)
    rows = [line.split() for line in out[top + 1:end]]
    stored = pq.read_table(str(tmp_path / "out" / "sweep=ph")).to_pandas()
    assert stored["head"].notna().any()  # per-head rows were recorded
    whole = stored[(stored["step"] == 10) & stored["head"].isna()].sort_values(["member", "layer"])
    assert len(rows) == 4 * 7 == len(whole)  # 4 members x (q, k, v, out, mlp_in, mlp_out, unembed)
    assert [(int(r[0]), int(r[4]), r[5], r[6], r[9]) for r in rows] == [
        (m, l, st, f"{a:.3f}", f"{b:.3f}") for m, l, st, a, b in
        zip(whole["member"], whole["layer"], whole["status"], whole["rga_a"], whole["rga_b"])]
    assert out[end + 1] == "critical depth (rga_b >= 0.9), hidden layers 1..n_layers-1:"
    assert out[end + 2].split()[:4] == ["member", "depth", "n_hidden", "l_star"]
    assert [float(line.split()[2]) for line in out[end + 3:end + 7]] == [6.0] * 4  # n_layers 7: hidden 1..6


def test_transformer_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"model.family: `a sequence task for family transformer` must hold"):
        parse_config({"task": {"name": "fc1"}, "model": {"family": "transformer"}})
    with pytest.raises(ConfigError, match=r"model.family: `transformer or factory for task modular` must hold"):
        parse_config({"task": {"name": "modular"}})
    with pytest.raises(ConfigError, match=r"model.heads: `width divisible by heads` must hold, but got width=10"):
        parse_config({"task": {"name": "modular"}, "model": {"family": "transformer", "width": 10, "heads": 4}})
    with pytest.raises(ConfigError, match=r"task.modulus: `a prime for operation div` must hold, but got 12"):
        parse_config({"task": {"name": "modular", "modulus": 12, "operation": "div"},
                      "model": {"family": "transformer"}})


def _records(outcomes):
    """Records of networks whose accuracies follow the named outcome, one per (wd, frac) cell."""
    curves = {"comprehension": ([0, .5, 1, 1], [0, .95, .95, .97]), "grokking": ([0, 1, 1, 1], [0, .1, .2, .95]),
              "memorisation": ([0, 1, 1, 1], [0, .1, .1, .1]), "confusion": ([0, .2, .3, .3], [0, .1, .1, .1])}
    rows = []
    for net, (wd, frac, outcome) in enumerate(outcomes):
        train, test = curves[outcome]
        for step, a, b in zip([0, 10, 100, 1000], train, test):
            rows.append({"sweep_id": "s", "run_id": f"r{net}", "member": 0, "step": step, "status": "ok",
                         "weight_decay": wd, "train_fraction": frac, "seed": 0, "data_seed": 0,
                         "train_accuracy": a, "probe_accuracy": b})
    return pd.DataFrame(rows)


def test_learning_phase_grid_takes_the_majority_per_cell():
    df = _records([(0.0, 0.3, "memorisation"), (0.0, 0.3, "memorisation"), (0.0, 0.3, "grokking"),
                   (1.0, 0.3, "grokking"), (1.0, 0.5, "comprehension"), (0.0, 0.5, "confusion")])
    nets = learning_phases(df)
    assert sorted(nets["outcome"]) == ["comprehension", "confusion", "grokking", "grokking", "memorisation",
                                       "memorisation"]
    grid = learning_phase_grid(df, "weight_decay", "train_fraction").set_index(["train_fraction", "weight_decay"])
    assert grid.loc[(0.3, 0.0), "phase"] == "memorisation" and grid.loc[(0.3, 0.0), "share"] == pytest.approx(2 / 3)
    assert grid.loc[(0.3, 1.0), "phase"] == "grokking" and grid.loc[(0.3, 1.0), "grok_step_mean"] == 1000
    assert grid.loc[(0.3, 1.0), "delay_mean"] == 990
    assert grid.loc[(0.5, 1.0), "phase"] == "comprehension" and grid.loc[(0.5, 0.0), "phase"] == "confusion"
    assert np.isclose(grid.loc[(0.5, 1.0), "final_held_out_accuracy"], 0.97)


def test_the_learning_phase_figure_is_drawn_from_a_run(tmp_path):
    from phasemap.cli import main

    train_pack(_grok(train__steps=20, probe__steps=[0, 10, 20]), root=str(tmp_path))
    out = tmp_path / "learning.png"
    assert main(["plot", str(tmp_path), "learning-phase", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000


def test_both_token_readers_round_trip(tmp_path):
    from phasemap.data import read_tokens

    ids = np.array([0, 5, 65535, 7, 7, 1], dtype="<u2")
    ids.tofile(tmp_path / "train.bin")
    tokens, vocab = read_tokens(str(tmp_path / "train.bin"), vocab_size=65536)
    assert tokens.tolist() == ids.tolist() and vocab == 65536
    with pytest.raises(ConfigError, match=r"task.vocab_size: `token ids < vocab_size` must hold, but got id 65535"):
        read_tokens(str(tmp_path / "train.bin"), vocab_size=100)
    with pytest.raises(ConfigError, match=r"task.vocab_size: `the vocabulary size of .*train.bin"):
        read_tokens(str(tmp_path / "train.bin"))
    (tmp_path / "text.txt").write_text("hello, world\nhé")
    tokens, vocab = read_tokens(str(tmp_path / "text.txt"))
    chars = sorted(set("hello, world\nhé"))
    assert vocab == len(chars) and "".join(chars[i] for i in tokens.tolist()) == "hello, world\nhé"
    with pytest.raises(ConfigError, match="task.path: `a token file or a folder of text files exists` must hold"):
        read_tokens(str(tmp_path / "missing.txt"))


def test_a_folder_of_text_files_and_the_interpreters_own_stdlib_are_token_sources(tmp_path, monkeypatch):
    import sysconfig

    from phasemap.data import read_tokens

    folder = tmp_path / "lib"
    folder.mkdir()
    (folder / "b.py").write_text("y = 2\n")
    (folder / "a.py").write_text("x = 1\n")
    (folder / "notes.txt").write_text("é")
    (folder / "skip.md").write_text("never read")
    (folder / "sub").mkdir()
    (folder / "sub" / "c.py").write_text("never read either")
    text = "x = 1\n" + "\n" + "y = 2\n" + "\n" + "é"  # sorted by name, joined by newlines
    tokens, vocab = read_tokens(str(folder))
    chars = sorted(set(text))
    assert vocab == len(chars) and "".join(chars[i] for i in tokens.tolist()) == text
    real = sysconfig.get_paths
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **k: {**real(*a, **k), "stdlib": str(folder)})
    assert read_tokens("python-stdlib")[0].tolist() == tokens.tolist()  # the interpreter's stdlib folder
    assert parse_config({"task": {"name": "tokens", "path": "python-stdlib", "block": 2},
                         "model": {"family": "transformer", "width": 8, "heads": 2}}).task.path == "python-stdlib"
    with pytest.raises(ConfigError, match="task.path: `a folder holding \\*.py or \\*.txt files` must hold"):
        read_tokens(str(tmp_path))  # only a subfolder there
    with pytest.raises(ConfigError, match=r"task.path: `path exists` must hold, but got '/no/such/folder'"):
        parse_config({"task": {"name": "tokens", "path": "/no/such/folder"}, "model": {"family": "transformer"}})


def test_a_transformer_trains_on_a_text_file_tokens_as_samples(tmp_path):
    text = "the quick brown fox jumps over the lazy dog. " * 40
    (tmp_path / "corpus.txt").write_text(text)
    cfg = parse_config({"task": {"name": "tokens", "path": str(tmp_path / "corpus.txt"), "block": 8},
                        "model": {"family": "transformer", "depth": 1, "width": 8, "heads": 2},
                        "optimizer": {"name": "adamw", "lr": 1e-2},
                        "train": {"steps": 150, "batch_size": 32}, "probe": {"n_samples": 40, "steps": [150]}})
    recs = train_pack(cfg, root=str(tmp_path / "r")).records
    vocab = len(set(text))
    assert recs["output_dim"].iloc[0] == vocab and recs["dim_out"].iloc[-1] == vocab  # the unembedding
    assert recs["probe_accuracy"].iloc[-1] > 0.3  # a repetitive text: next characters are easy (0.94 seen)
    assert (recs["nan_reason"] == "").all()


def test_per_head_rows_are_the_heads_slices_of_the_projection():
    import torch
    from torch import nn

    from phasemap.measure import layer_metrics, measure
    from phasemap.measure.attention import decomposed, projections

    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn, self.head = nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.attn(x, x, x, need_weights=False)[0])

    net = Net().eval()
    x, y = torch.randn(10, 6, 8), torch.randn(10, 6, 3)
    loss = lambda o, t: 0.5 * ((o - t) ** 2).sum(-1)  # noqa: E731
    table = measure(net, x, y, loss, covariance="raw", per_head=True)
    assert table["name"].tolist()[:4] == ["attn.q_proj", "attn.q_proj.head1", "attn.q_proj.head2", "attn.k_proj"]
    assert table["layer"].tolist() == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5] and table["head"].isna().sum() == 5
    assert table["name"].tolist()[10:12] == ["attn.head1.out", "attn.head2.out"]  # out_proj's heads' outputs
    heads = table.iloc[1:3]
    assert heads["kind"].tolist() == ["attention.q.head"] * 2 and heads["dim_out"].tolist() == [4, 4]
    # directly: q's inputs, outputs and output gradients, sliced by head (W: the head's rows)
    found = projections(net)
    q = found[0][1]
    cap = {}
    hook = q.register_forward_hook(lambda m, i, o: cap.update(a=i[0], b=o))
    with decomposed(net, found):
        out = net(x)
    hook.remove()
    g_b = -torch.autograd.grad(loss(out, y).sum(), cap["b"])[0].reshape(-1, 8)
    h_a, h_b, W = cap["a"].detach().reshape(-1, 8), cap["b"].detach().reshape(-1, 8), q.weight.detach()
    for h in range(2):
        s = slice(4 * h, 4 * h + 4)
        direct, _ = layer_metrics(h_a[None], h_b[None, :, s], g_b[None, :, s], W[None, s], covariance="raw")
        for c in METRIC_COLUMNS:
            if c.startswith(("nfa", "stat", "nc", "balance")) or c.endswith("_null_se") or c in BASELINE_COLUMNS:
                continue  # need the rest of the network, earlier probes, labels, weight decay or the other heads
            want, got = direct[c].item(), heads[c].iloc[h]
            assert (math.isnan(want) and math.isnan(got)) or got == pytest.approx(want, rel=1e-4, abs=1e-6), c


def test_per_head_rows_in_a_packed_run_stay_out_of_the_layer_figures(tmp_path):
    from phasemap import load
    from phasemap.analysis.aggregate import last_records, pick_layer

    train_pack(_grok(probe__per_head=True, train__steps=5, probe__steps=[5]), root=str(tmp_path))
    recs = load(str(tmp_path))
    heads = recs[recs["head"].notna()]
    assert len(heads) == len(recs[recs["head"].isna() & recs["layer_kind"].isin(["attention.q", "attention.k",
                                                                                   "attention.v", "attention.out"])]) * 2
    assert set(heads["layer_kind"]) == {"attention.q.head", "attention.k.head", "attention.v.head",
                                        "attention.head_out"}
    assert (recs["n_layers"] == 7).all() and not recs.duplicated(["config_hash", "step", "layer", "head"]).any()
    assert pick_layer(last_records(recs), "last")["layer_name"].unique().tolist() == ["block1.mlp_out"]
    assert last_records(recs)["head"].isna().all()


def test_a_tied_transformer_trains_packed_as_alone_with_one_shared_weight(tmp_path):
    from phasemap.models import build_model

    pack = _grok(model__tied=True, train__steps=4, train__check_every=2, probe__steps=[0, 4])
    model, _ = build_model(pack.model, (4,), 9, [m.seed for m in pack.members])
    assert sum(n.endswith("unembed__weight") for n in model.stacked) == 0  # stored once, as the embedding
    for k in range(2):
        member = model.member(k)
        state = member.state_dict()
        assert member.unembed.weight is member.tok.weight  # still tied: one parameter
        assert torch.equal(state["unembed.weight"], state["tok.weight"])
        assert torch.equal(state["tok.weight"], model.stacked["tok__weight"][k])
    # one gradient per member for the shared weight: the sum over its two uses, as alone
    x = torch.randint(0, 9, (5, 4))
    model(x).sum().backward()
    alone = model.member(1)
    alone(x).sum().backward()
    assert torch.allclose(model.stacked["tok__weight"].grad[1], alone.tok.weight.grad, atol=1e-6)
    packed = assert_members_equal_alone(pack, tmp_path, atol=1e-5, paired_tol=1e-3)
    assert packed["tied"].all() and "unembed" in set(packed["layer_name"])
