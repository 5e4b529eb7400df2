"""The profiler: what the optimizers' code costs on a device, written to the ``profile`` table.

Modules (one concept each):

- :mod:`bench.profile.shapes` — the one catalogue of model shapes (and the models behind it);
- :mod:`bench.profile.flops` — closed-form FLOP counts of the optimizers' routes;
- :mod:`bench.profile.kernels` — ``measure_kernel``: one route (Spectral Newton's svd, gram,
  solve, polar; Muon's ns5) timed on one shape, device-synchronised;
- :mod:`bench.profile.optimizer_step` — one whole step of every optimizer on a model;
- :mod:`bench.profile.collectives` — the owner sharding's bucketed broadcasts at P ranks;
- :mod:`bench.profile.spectral_step` — the sharded vs redundant Spectral Newton step at P ranks;
- :mod:`bench.profile.probe_overhead` — the curvature probe against the training step;
- :mod:`bench.profile.config` — the pydantic profile config (``extra="forbid"``);
- :mod:`bench.profile.runner` — ``run_profile_job``: the single-process measurements of one node,
  written to the ``profile`` Parquet table (also ``python -m bench.profile.runner``, no Ray).

``specbench profile CONFIG`` (``launchers/profile_runner.py``) is the one entry point that runs
every section. Importing this package imports nothing heavy; torch is loaded by the modules that
need it.
"""
