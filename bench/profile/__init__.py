"""Estimation-cost profiler: how long the spectral kernels take on a device, per matrix shape.

Modules (one concept each):

- :mod:`bench.profile.shapes` — named shape sets of real models with per-model counts;
- :mod:`bench.profile.flops` — closed-form FLOP counts of every method;
- :mod:`bench.profile.kernels` — ``measure_kernel``: one timed, device-synchronised measurement;
- :mod:`bench.profile.config` — the pydantic profile config (``extra="forbid"``);
- :mod:`bench.profile.runner` — ``run_kernel_profile``: a whole job, written to the ``profile``
  Parquet table (also ``python -m bench.profile.runner``, which needs no Ray).

Importing this package imports nothing heavy; torch is loaded by the modules that need it.
"""
