"""The same config and seed give the same tables on CPU: a second, independent run of the
micro workflow reproduces every number of the first but the timings."""

from __future__ import annotations

import pandas as pd
import pytest
from micro import run_micro

pytestmark = pytest.mark.sim

TIMINGS = ["ms_per_chunk"]


def test_same_config_and_seed_give_the_same_table(micro_run, tmp_path):
    result = run_micro(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    first = pd.read_csv(micro_run / "results/micro/tables/sweep.csv").drop(columns=TIMINGS)
    second = pd.read_csv(tmp_path / "results/micro/tables/sweep.csv").drop(columns=TIMINGS)
    pd.testing.assert_frame_equal(first, second)
    assert (micro_run / "results/micro/labels.parquet").read_bytes() == (
        tmp_path / "results/micro/labels.parquet"
    ).read_bytes()
