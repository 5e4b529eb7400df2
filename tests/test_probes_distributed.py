"""Two gloo ranks, each with half of the probe batch, give the one-process probe (float64)."""

from __future__ import annotations

import os
import pickle
import time

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_probes_oracle import CE, make_data, make_model, one_thread, settings  # noqa: F401 - autouse fixture

from bench.distributed import free_port, init_process_group
from bench.probes import run_probe


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    init_process_group(rank, world, port)
    try:
        model, data = make_model("cnn"), make_data("cnn")
        result = run_probe(model, CE, data, settings(micro_batch_size=5, spatial_subsample=2, hvp_method="loop"), "cpu")
        with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as fh:
            pickle.dump((result.curvature_rows, result.profile_rows), fh)
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_one_process(tmp_path):
    # fork: the children inherit the imported modules (spawn re-imports torch in each, which takes
    # most of this test's time on a loaded machine); they use one intra-op thread and make
    # their own gloo group, so nothing of the parent's threads is needed after the fork.
    ctx = mp.start_processes(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=False,
                             start_method="fork")
    deadline = time.monotonic() + 180
    while not ctx.join(timeout=2):  # raises if a rank failed
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail("the two probe ranks did not finish within 180 s")
    model, data = make_model("cnn"), make_data("cnn")
    single = pd.DataFrame(run_probe(model, CE, data, settings(micro_batch_size=5, spatial_subsample=2),
                                    "cpu").curvature_rows)
    for rank in range(2):
        with open(tmp_path / f"rank{rank}.pkl", "rb") as fh:
            rows, profile = pickle.load(fh)
        df = pd.DataFrame(rows)
        assert list(df.layer) == list(single.layer) and list(df.k) == list(single.k)
        assert (df.samples == 24).all()  # the global count, not the shard's
        assert {r["ranks"] for r in profile} == {2}
        for col in ("sigma", "h", "h_kron", "lambda_delta", "lambda_A", "concentration", "chi"):
            np.testing.assert_allclose(df[col], single[col], rtol=1e-10, atol=1e-15, err_msg=col)
