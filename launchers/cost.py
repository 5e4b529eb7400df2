"""``specbench cost`` and the cost report, with the optimizer's own sharding plan.

analysis prices what one step costs (:mod:`analysis.step_cost`) but may not import the
optimizers (it reads only Parquet). The scheduler exists once, in the optimizer
(``optimizers.distributed.lpt_assign``, then ``plan_buckets``); this module computes the plan with
it (:func:`bench.profile.collectives.plan_owner_sync`) and hands it to analysis as a
:data:`analysis.step_cost.Planner`, for the ``cost`` command and for the report::

    specbench cost --model llama-70b --ranks 1024 --device h200 [--method solve] [--probe-mode kronecker]
    specbench cost --model llama-70b --ranks 8 --device h200 --zero-stage 3 [--optimizer muon]
    python -m launchers.cost fit RESULTS --name NAME [--out DIR] [--comm-results DIR] [--probe-results DIR]
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the parser is built on every ``specbench`` call: nothing heavy at import
    from analysis.step_cost import Planner, ShardingPlan

#: Parameter dtypes the optimizer's owners may broadcast (its parameter copies: fp32 masters at
#: ZeRO-0, also under bf16 training; bf16 for pure-bf16 parameters).
PARAM_DTYPES: tuple[str, ...] = ("fp32", "bf16")


def owner_sharding_plan(
    shapes: Sequence[tuple[int, int]], world: int, *, bucket_cap_mb: float | None = None, param_dtype: str = "fp32"
) -> ShardingPlan:
    """The owners and broadcast buckets ``OwnerSharding`` makes for these matrices on ``world``
    ranks (the optimizer's own functions, on meta tensors)."""
    import torch

    from analysis.step_cost import ShardingPlan
    from bench.profile.collectives import plan_owner_sync
    from optimizers.distributed import DEFAULT_BUCKET_CAP_MB

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[param_dtype]
    cap = DEFAULT_BUCKET_CAP_MB if bucket_cap_mb is None else bucket_cap_mb
    owners, buckets = plan_owner_sync(list(shapes), world, cap, dtype)
    return ShardingPlan(tuple(owners), tuple(buckets))


def planner(bucket_cap_mb: float | None = None, param_dtype: str = "fp32") -> Planner:
    """:func:`owner_sharding_plan` with the optimizer's bucket size and parameter dtype fixed."""
    return functools.partial(owner_sharding_plan, bucket_cap_mb=bucket_cap_mb, param_dtype=param_dtype)


def cmd_cost(args: argparse.Namespace) -> int:
    """Body of ``specbench cost`` (arguments: see ``add_cost_arguments``)."""
    from analysis.cost_report import cost_cli

    if args.zero_stage is not None:
        from analysis.zero_cost import zero_cli

        return zero_cli(args.model, args.ranks, args.device, args.zero_stage, args.optimizer, args.precision,
                        args.device_memory_gb)
    if args.bucket_cap_mb is not None and not args.bucket_cap_mb > 0:
        print("specbench: error: --bucket-cap-mb must be > 0", file=sys.stderr)
        return 2
    return cost_cli(args.model, args.ranks, args.device, planner(args.bucket_cap_mb, args.param_dtype), args.method,
                    args.dtype, not args.replicated, args.probe_k, args.probe_batch, args.train_batch,
                    args.probe_interval, args.probe_mode)


def add_cost_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``specbench cost``."""
    from bench.profile.flops import METHODS

    p.add_argument("--model", required=True, help="e.g. gpt2-small, llama-7b, llama-70b, llama-405b")
    p.add_argument("--ranks", type=int, required=True, help="devices the matrix work is sharded over")
    p.add_argument("--device", required=True,
                   help="device cost constants: a name in analysis/device_costs/ (cpu-2core, h200) or a JSON path")
    p.add_argument("--method", default="solve", help=f"the optimizers' route ({', '.join(METHODS)}); default solve")
    p.add_argument("--dtype", default="fp32", help="kernel precision in the device cost constants (default fp32)")
    p.add_argument("--replicated", action="store_true", help="every rank computes every matrix (no sharding)")
    p.add_argument("--bucket-cap-mb", type=float, default=None, help="the optimizer's bucket_cap_mb (default: its own)")
    p.add_argument("--param-dtype", choices=PARAM_DTYPES, default="fp32",
                   help="dtype of the broadcast parameter values (fp32: the optimizer's master copies)")
    p.add_argument("--probe-k", type=int, default=20, help="probe directions per layer (default: the probe's 20)")
    p.add_argument("--probe-batch", type=int, default=2048, help="probe batch in samples (default: the probe's 2048)")
    p.add_argument("--train-batch", type=int, default=1024, help="global training batch in samples (default 1024)")
    p.add_argument("--probe-interval", type=int, default=100, help="training steps between probes (default 100)")
    p.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), default=None,
                   help="instead: memory per rank, communication and whether the model fits at this ZeRO stage")
    p.add_argument("--optimizer", default="adamw",
                   help="with --zero-stage: adamw, muon, muon_deepspeed or spectral_newton (default adamw)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16",
                   help="with --zero-stage: training precision (default bf16, fp32 masters)")
    p.add_argument("--device-memory-gb", type=float, default=None,
                   help="with --zero-stage: device memory in GB (default: the device's datasheet value)")
    p.add_argument("--probe-mode", choices=("full", "kronecker", "online"), default="full",
                   help="curvature probe mode to price (default full: exact HVPs)")


def main(argv: list[str] | None = None) -> int:
    """``python -m launchers.cost fit RESULTS --name NAME ...``: fit the device cost constants
    and write the cost report (exit 2 with one message on bad input)."""
    from analysis.cost_model import DEVICE_COSTS_DIR, CostModelError, add_fit_arguments
    from analysis.cost_report import build_cost_report

    parser = argparse.ArgumentParser(prog="python -m launchers.cost", description=main.__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("fit", help="fit device cost constants from profile results and write the cost report")
    add_fit_arguments(p)
    p.add_argument("--out", help="report directory (default: <results>/cost_report)")
    p.add_argument("--costs-out", help=f"JSON path (default: <out>/<name>.json; the project keeps them in {DEVICE_COSTS_DIR})")
    args = parser.parse_args(argv)
    try:
        rep = build_cost_report(args.results, args.name, planner(), args.out, args.costs_out, args.device,
                                comm_results=args.comm_results, probe_results=args.probe_results)
    except (CostModelError, FileNotFoundError) as exc:
        print(f"specbench: error: {exc}", file=sys.stderr)
        return 2
    print(rep.text)
    print(f"\nreport: {rep.report_path}; device cost constants: {rep.costs_path}; {len(rep.plot_paths)} plot(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
