"""Reading records: old files get the values their time used, new files are read as written."""

import pyarrow as pa
import pyarrow.fs  # noqa: F401  (pa.fs)
import pyarrow.parquet as pq
import torch
from torch import nn

from phasemap import Recorder, load, records, sql


def _cnn_recorder_run(root):
    """A tiny CNN trained by hand and recorded with 8 null samples, config naming two columns."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    x, y = torch.randn(48, 1, 6, 6), torch.randint(0, 3, (48,))
    per_sample = lambda o, t: nn.functional.cross_entropy(o, t, reduction="none")  # noqa: E731
    with Recorder(str(root), "mine", "cnn", config={"family": "cnn", "weight_decay": 1e-3}, null_samples=8) as rec:
        for step in (0, 1):
            rec.probe(net, x, y, per_sample, step, labels=y)


def test_a_new_file_with_null_fields_is_not_filled_with_old_defaults(tmp_path):
    _cnn_recorder_run(tmp_path)
    for got in (load(str(tmp_path)), sql(str(tmp_path), "SELECT * FROM records")):
        assert got["null_samples"].eq(8).all()  # the recorder's own setting, written
        assert got["family"].eq("cnn").all() and got["weight_decay"].eq(1e-3).all()
        # never set by this user: null, not the v1 values (norm 'batch', n_classes 10, heads 4)
        for column in ("norm", "n_classes", "heads", "tied", "data_path", "modulus"):
            assert got[column].isna().all(), column


def test_only_the_columns_a_file_lacks_are_filled(tmp_path):
    _cnn_recorder_run(tmp_path / "new")
    table = pq.read_table(next((tmp_path / "new").rglob("records.parquet")))
    # the same rows written by an older version: without `norm` and `heads`, which it did not have
    folder = tmp_path / "mixed" / "sweep=mine" / "run=old"
    folder.mkdir(parents=True)
    old = table.drop_columns(["norm", "heads"]).set_column(
        table.schema.get_field_index("config_hash"), "config_hash", pa.array(["older"] * len(table)))
    pq.write_table(old.replace_schema_metadata({"phasemap_schema_version": "3"}), folder / "part-000000001.parquet")
    new = tmp_path / "mixed" / "sweep=mine" / "run=cnn"
    new.mkdir(parents=True)
    pq.write_table(table, new / "records.parquet")
    for got in (load(str(tmp_path / "mixed")), sql(str(tmp_path / "mixed"), "SELECT * FROM records")):
        old_file = got["config_hash"] == "older"
        assert old_file.sum() == (~old_file).sum() == len(table)
        assert got.loc[old_file, "norm"].eq(records.V1_DEFAULTS["norm"]).all()  # the file lacks it: filled
        assert got.loc[old_file, "heads"].eq(4).all()
        assert got.loc[~old_file, "norm"].isna().all() and got.loc[~old_file, "heads"].isna().all()  # as written
        assert got["n_classes"].isna().all()  # both files have the column: never filled


def test_an_object_store_client_is_built_once_per_root_and_fails_fast(monkeypatch):
    import socket

    import pytest

    with socket.socket() as s:  # a loopback port nobody listens on: a dead endpoint
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(k, v)
    fs, path = records.filesystem("s3://bucket/prefix/results")
    assert path == "bucket/prefix/results" and isinstance(fs, pa.fs.S3FileSystem)
    assert records.filesystem("s3://bucket/other")[0] is fs  # one client per bucket and environment
    options = fs.__reduce__()[1][0]  # the client's settings, as pickling sends them
    assert (options["endpoint_override"], options["scheme"], options["region"]) == (f"127.0.0.1:{port}", "http", "us-east-1")
    assert options["connect_timeout"] > 0 and options["request_timeout"] > 0
    with pytest.raises(OSError, match="127.0.0.1"):  # the endpoint it was given, refused
        fs.get_file_info("bucket/prefix/results")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert records.filesystem("s3://bucket/prefix")[0].region == "eu-west-1"  # the environment changed: anew
    with pytest.raises(ValueError, match="s3:// options"):
        records.filesystem("s3://bucket/x?endpoint=typo")


def test_last_records_are_each_networks_rows_at_its_last_step(tmp_path):
    _cnn_recorder_run(tmp_path)  # probes at steps 0 and 1, no `steps` column value
    everything = sql(str(tmp_path), "SELECT step, count(*) AS n FROM records GROUP BY step ORDER BY step")
    last = sql(str(tmp_path), "SELECT step, count(*) AS n FROM last_records GROUP BY step")
    assert everything["step"].tolist() == [0, 1] and last["step"].tolist() == [1]
    assert last["n"].tolist() == [everything["n"].iloc[1]]


def test_a_recorder_option_that_contradicts_its_config_is_refused(tmp_path):
    import pytest

    from phasemap import parse_config

    cfg = parse_config({"probe": {"null_samples": 2}})
    with pytest.raises(ValueError, match=r"`null_samples as the config says` must hold, but got null_samples=8"):
        Recorder(str(tmp_path), "mine", "x", config=cfg, null_samples=8)
    with Recorder(str(tmp_path), "mine", "y", config=cfg, null_samples=2) as rec:  # agreeing is fine
        assert rec.options["null_samples"] == 2 and rec.options["per_head"] is False


def test_object_store_roots_keep_their_path_and_credentials():
    fs, path = records.filesystem("s3://AKID:SE%2FCRET@bucket/prefix?region=eu-west-1")
    options = fs.__reduce__()[1][0]
    assert path == "bucket/prefix" and options["access_key"] == "AKID" and options["secret_key"] == "SE/CRET"
    assert options["region"] == "eu-west-1"
    fs, path = records.filesystem("file:///tmp/some/root")  # other schemes: pyarrow's own reading
    assert isinstance(fs, pa.fs.LocalFileSystem) and path == "/tmp/some/root"


def test_recorder_runs_measured_differently_are_different_networks(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 1))
    x, y = torch.randn(40, 3), torch.randn(40, 1)
    per_sample = lambda o, t: ((o - t) ** 2).sum(-1)  # noqa: E731
    hashes = {}
    for run, options in (("centered", {}), ("raw", {"covariance": "raw"})):
        with Recorder(str(tmp_path), "mine", run, config={"lr": 0.1}, null_samples=0, **options) as rec:
            rec.probe(net, x, y, per_sample, 0)
            hashes[run] = rec.config_hash
    assert hashes["centered"] != hashes["raw"]
    got = load(str(tmp_path))
    assert sorted(got["covariance"].unique()) == ["centered", "raw"]  # both kept, not one per "config"


def test_files_before_the_head_baselines_read_them_as_nan(tmp_path):
    _cnn_recorder_run(tmp_path / "new")
    table = pq.read_table(next((tmp_path / "new").rglob("records.parquet")))
    folder = tmp_path / "old" / "sweep=mine" / "run=old"
    folder.mkdir(parents=True)
    old = table.drop_columns(["heads_h_b", "init_h_b"])
    pq.write_table(old.replace_schema_metadata({"phasemap_schema_version": "3"}), folder / "records.parquet")
    for got in (load(str(tmp_path / "old")), sql(str(tmp_path / "old"), "SELECT * FROM records")):
        assert len(got) == len(table) and got["rga_b"].notna().any()
        assert got["heads_h_b"].isna().all() and got["init_h_b"].isna().all()
