"""The report's input-bound flag: a trial's input share is the median over its logged rows of
data_time_s / step_time_s, and a share above the limit flags it (schema-2 files, without the
column, are never flagged)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.input_bound import INPUT_BOUND_SHARE, input_section, input_shares


def _frames(shares_by_trial: dict[str, list[float]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs = pd.DataFrame([{"sweep_name": "s", "model": "m", "dataset": "d", "trial_id": t} for t in shares_by_trial])
    rows = []
    for t, shares in shares_by_trial.items():
        for i, share in enumerate(shares):
            step_time = 0.5 + i  # different step times: the share, not the seconds, decides
            rows.append({"trial_id": t, "step": i + 1, "step_time_s": step_time, "data_time_s": share * step_time})
    return runs, pd.DataFrame(rows)


def test_trials_above_the_share_are_flagged_by_their_median_share():
    limit = INPUT_BOUND_SHARE
    cases = {
        "fed": [0.01, 0.02, 0.9],  # one slow interval (median 0.02): not input-bound
        "starved": [limit * 1.5, limit * 2, 0.0],  # median 1.5 × limit
        "edge": [limit, limit, limit],  # at the limit: not above it
    }
    runs, steps = _frames(cases)
    shares = input_shares(steps)
    for t, values in cases.items():
        assert np.isclose(shares[t], float(np.median(values)))
    section = input_section(runs, steps)
    assert section is not None and section.bound == ["starved"]
    assert "1 of 3 trials input-bound" in section.text and "starved" in section.text
    row = section.table.iloc[0]
    assert row["trials"] == 3 and row["input_bound"] == 1
    assert np.isclose(row["max_input_share"], limit * 1.5)
    assert "**Input-bound trials:** `starved`" in "\n".join(section.markdown)


def test_without_the_column_or_any_measured_row_there_is_no_section():
    runs, steps = _frames({"a": [0.5]})
    assert input_section(runs, steps.drop(columns="data_time_s")) is None
    steps["data_time_s"] = np.nan  # upgraded from schema 2: not measured
    assert input_section(runs, steps) is None
    runs, steps = _frames({"a": [0.01], "b": [0.02]})
    section = input_section(runs, steps)
    assert section is not None and section.bound == [] and "no trial input-bound" in section.text


def test_a_schema_2_file_is_upgraded_with_the_input_columns_null_and_never_flagged(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from analysis_fixtures import run_row

    from analysis.dataset import load_table
    from bench.results.schema import METADATA_KEY
    from bench.results.upgrade import upgrade_file
    from bench.results.writer import to_table

    trial = tmp_path / "s" / "trials" / "t0"
    trial.mkdir(parents=True)
    tables = {"runs": to_table("runs", [run_row(sweep_name="s", trial_id="t0")]).drop_columns(["data_cache_key"]),
              "steps": to_table("steps", [{"trial_id": "t0", "step": 1, "step_time_s": 1.0}]).drop_columns(["data_time_s"])}
    for name, table in tables.items():
        table = table.set_column(table.column_names.index("schema_version"), "schema_version",
                                 pa.array([2] * table.num_rows, pa.int32()))
        pq.write_table(table.replace_schema_metadata({METADATA_KEY: b"2"}), trial / f"{name}.parquet")
        assert upgrade_file(trial / f"{name}.parquet") is True
    runs, steps = load_table(tmp_path / "s", "runs"), load_table(tmp_path / "s", "steps")
    assert runs["data_cache_key"].isna().all() and steps["data_time_s"].isna().all()
    assert input_section(runs, steps) is None
