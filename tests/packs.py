"""The pack guarantee, checked one way for every model family: each member of a pack records
what the same config trained alone records."""

import pandas as pd

from phasemap import train_pack
from phasemap.measure import METRIC_COLUMNS

# paired exponents of unrelated eigenbases sit near 0 with R^2 near 0: rounding of the
# eigenvectors moves them by ~1e-6 absolute, so they get tolerances of their own
PAIRED = [c for c in METRIC_COLUMNS if c.startswith("pah_") and "sorted" not in c]
COLUMNS = ["train_loss", "probe_loss", "train_accuracy", "probe_accuracy"] + [c for c in METRIC_COLUMNS
                                                                              if c not in PAIRED]


def assert_members_equal_alone(pack, tmp_path, atol: float, paired_tol: float) -> pd.DataFrame:
    """Train `pack`, then each member alone; every member's rows equal (rtol 1e-4, `atol`; the
    paired exponents to `paired_tol`, relative and absolute). Returns the pack's records."""
    packed = train_pack(pack, root=str(tmp_path / "pack")).records
    assert packed["member"].nunique() == len(pack.members)
    for k, member in enumerate(pack.members):
        alone = train_pack(pack.member_config(member), root=str(tmp_path / f"alone{k}")).records
        mine = packed[packed["member"] == k].reset_index(drop=True)
        assert list(mine["config_hash"].unique()) == list(alone["config_hash"].unique())
        assert mine[["step", "layer", "layer_name"]].equals(alone[["step", "layer", "layer_name"]])
        pd.testing.assert_frame_equal(mine[COLUMNS], alone[COLUMNS], rtol=1e-4, atol=atol)
        pd.testing.assert_frame_equal(mine[PAIRED], alone[PAIRED], rtol=paired_tol, atol=paired_tol)
    return packed
