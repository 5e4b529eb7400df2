"""Two gloo ranks, each with its share of the probe batch, give the one-process probe (float64),
in every mode; each rank reads only its share (a rank that ignored the process group and probed
the whole batch itself would give the same numbers, so the samples it reads are recorded)."""

from __future__ import annotations

import os
import pickle
import time
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ranks import end_rank
from test_probes_oracle import CE, make_data, make_model, one_thread, settings  # noqa: F401 - autouse fixture
from torch.utils.data import Dataset

from bench.distributed import free_port, init_process_group
from bench.probes import ProbeBatch, run_probe

#: (label, settings overrides). ``sketched``: every factor side of the CNN wider than ℓ = 4.
CASES = {
    "full": {"micro_batch_size": 5, "spatial_subsample": 2, "hvp_method": "loop"},
    "kronecker": {"micro_batch_size": 5, "mode": "kronecker"},
    "online": {"micro_batch_size": 5, "mode": "online"},
    "sketched": {"micro_batch_size": 5, "mode": "kronecker", "top_k": 3, "sketch_size": 4},
}
COLUMNS = ("sigma", "h", "h_kron", "lambda_delta", "lambda_A", "concentration", "chi", "alpha_lo", "alpha_hi")


class Recording(Dataset):
    """A dataset that records which samples were read."""

    def __init__(self, inner: Dataset) -> None:
        self.inner = inner
        self.read: list[int] = []

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        self.read.append(int(i))
        return self.inner[i]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    init_process_group(rank, world, port)
    try:
        out = {}
        for label, kw in CASES.items():
            model, data = make_model("cnn"), Recording(make_data("cnn"))
            result = run_probe(model, CE, data, settings(**kw), "cpu")
            out[label] = (result.curvature_rows, result.profile_rows, data.read)
        with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as fh:
            pickle.dump(out, fh)
    except BaseException:  # the traceback reaches the launcher
        dist.destroy_process_group()
        raise
    end_rank()


def test_two_ranks_equal_one_process(tmp_path):
    # fork: the children inherit the imported modules (spawn re-imports torch in each, which takes
    # most of this test's time on a loaded machine); they use one intra-op thread and make
    # their own gloo group, so nothing of the parent's threads is needed after the fork.
    ctx = mp.start_processes(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=False,
                             start_method="fork")
    deadline = time.monotonic() + 240
    while not ctx.join(timeout=2):  # raises if a rank failed
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail("the two probe ranks did not finish within 240 s")
    ranks = []
    for rank in range(2):
        with open(tmp_path / f"rank{rank}.pkl", "rb") as fh:
            ranks.append(pickle.load(fh))
    for label, kw in CASES.items():
        data = Recording(make_data("cnn"))
        single = pd.DataFrame(run_probe(make_model("cnn"), CE, data, settings(**kw), "cpu").curvature_rows)
        for out in ranks:
            rows, profile, _ = out[label]
            df = pd.DataFrame(rows)
            assert list(df.layer) == list(single.layer) and list(df.k) == list(single.k), label
            assert (df.samples == 24).all()  # the global count, not the shard's
            assert {r["ranks"] for r in profile} == {2}
            cols = [c for c in COLUMNS if single[c].notna().any()]
            if label == "sketched":  # merged sketches differ from one sketch; both stay within the bound
                cols = [c for c in cols if not c.startswith(("lambda", "h_kron", "chi"))]
                for side in ("delta", "A"):
                    assert (df[f"lambda_{side}"] <= single[f"lambda_{side}"] + single[f"lambda_{side}_bound"]
                            + df[f"lambda_{side}_bound"] + 1e-12).all()
            for col in cols:
                np.testing.assert_allclose(df[col], single[col], rtol=1e-10, atol=1e-15, err_msg=f"{label}: {col}")
        # The work is split, not repeated: over both ranks every sample is read as often as by the
        # one process (once per pass), besides the one sample each reads to order the layers; a
        # rank that ignored the process group would read every sample once more.
        first = ProbeBatch.from_dataset(make_data("cnn"), 24).indices[0]
        reads = [Counter(out[label][2]) for out in ranks]
        order = Counter({first: 1})
        assert reads[0] - order + (reads[1] - order) == Counter(data.read) - order, label
        assert all(set(r) != set(data.read) for r in reads), label
    # Both ranks hold the same rows (the owners' values, shared).
    for label in CASES:
        a, b = (pd.DataFrame(out[label][0]) for out in ranks)
        pd.testing.assert_frame_equal(a, b)
