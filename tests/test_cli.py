"""The command line: user mistakes end in one message and exit status 2, with nothing started."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import REPO, tiny_sweep

from launchers.cli import UsageError


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "launchers.cli", *args], capture_output=True, text=True, cwd=cwd or REPO, timeout=300
    )


def assert_usage_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_parser_configs_and_seeds_load_without_torch():
    # `specbench --help`, `status`, `report` and `consolidate` read configs and Parquet only; with
    # torch (~2.5 s to import) behind them each call took seconds before it could say anything.
    code = ("import sys, launchers.cli, launchers.sweep, launchers.data, bench.probes\n"
            "launchers.cli.build_parser()\n"
            "assert bench.probes.ProbeSettings().mode == 'full'\n"
            "print(sorted(m for m in ('torch', 'deepspeed', 'ray') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_malformed_yaml(write_yaml, tmp_path):
    path = write_yaml("name: x\nworkloads: [\n  - {model: builtin:cnn\n")
    proc = run_cli("sweep", str(path), "--storage", str(tmp_path / "out"))
    assert_usage_error(proc, "malformed YAML", "line")
    assert not (tmp_path / "out").exists()


def test_every_problem_is_listed_and_nothing_is_created(write_yaml, tmp_path):
    doc = tiny_sweep(optimizers=[{"name": "nope"}], workloads=[{"model": "builtin:cnn", "dataset": "nosuch:x"}])
    doc["training"]["bogus"] = 1
    path = write_yaml(doc)
    proc = run_cli("sweep", str(path), "--storage", str(tmp_path / "out"))
    assert_usage_error(proc, "unknown optimizer 'nope'", "nosuch:x", "training.bogus: unknown key", "3 problem(s)")
    assert not (tmp_path / "out").exists()


def test_missing_file():
    assert_usage_error(run_cli("sweep", "does/not/exist.yaml"), "file not found")


def test_impossible_resources_rejected_before_ray_starts(write_yaml, tmp_path):
    doc = tiny_sweep()
    doc["resources"].update(num_workers=64, cpus_per_worker=1.0)
    proc = run_cli("sweep", str(write_yaml(doc)), "--storage", str(tmp_path / "out"))
    assert_usage_error(proc, "resources: one trial needs 64.01 CPU")


def test_gpu_request_without_gpus(write_yaml, tmp_path):
    doc = tiny_sweep()
    doc["resources"]["use_gpu"] = True
    proc = run_cli("sweep", str(write_yaml(doc)), "--storage", str(tmp_path / "out"))
    assert_usage_error(proc, "use_gpu")


def test_unwritable_storage(write_yaml, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = run_cli("sweep", str(write_yaml(tiny_sweep())), "--storage", str(blocker / "sub"))
    assert_usage_error(proc, "not writable")


def test_report_on_missing_results(tmp_path):
    assert_usage_error(run_cli("report", str(tmp_path / "nothing")), "does not exist")
    (tmp_path / "empty").mkdir()
    assert_usage_error(run_cli("report", str(tmp_path / "empty")))


def test_train_trial_out_of_range(write_yaml, tmp_path):
    proc = run_cli("train", str(write_yaml(tiny_sweep())), "--trial", "5", "--storage", str(tmp_path))
    assert_usage_error(proc, "out of range")


def test_config_lists_trials_and_show_lists_every_default(write_yaml):
    proc = run_cli("config", str(write_yaml(tiny_sweep(seeds=2))))
    assert proc.returncode == 0, proc.stderr
    assert "config OK: 2 trials" in proc.stderr
    show = run_cli("config", "--show")
    assert show.returncode == 0, show.stderr
    for key in ("micro_batch_size", "zero_stage", "warmup_steps", "cpus_per_worker", "damping", "alpha_policy"):
        assert key in show.stdout


def test_cluster_templates_from_the_cli(write_yaml, tmp_path):
    cfg = str(write_yaml(tiny_sweep()))
    ok = run_cli("cluster", "slurm", cfg, "--nodes", "2", "--cpus-per-node", "8", "--time", "02:00:00",
                 "--partition", "gpu", "-o", str(tmp_path / "job.sbatch"))
    assert ok.returncode == 0, ok.stderr
    text = (tmp_path / "job.sbatch").read_text()
    assert "#SBATCH --nodes=2" in text and "specbench sweep" in text
    k8s = run_cli("cluster", "kuberay", cfg, "--image", "img:1", "--workers", "2", "--cpus-per-worker", "4",
                  "--memory", "8Gi", "--storage", "/results")
    assert k8s.returncode == 0 and "kind: RayJob" in k8s.stdout
    bad = run_cli("cluster", "slurm", cfg, "--nodes", "0", "--cpus-per-node", "8", "--time", "02:00:00",
                  "--partition", "gpu")
    assert_usage_error(bad)
    too_small = run_cli("cluster", "slurm", cfg, "--nodes", "1", "--cpus-per-node", "0", "--time", "1:00:00",
                        "--partition", "gpu")
    assert_usage_error(too_small, "resources")


def test_resuming_on_a_machine_unlike_the_first_is_refused_before_anything_starts(write_yaml, tmp_path, capsys):
    import json

    from analysis_fixtures import run_row, write_table

    from analysis.provenance import SPEED_SPREAD_LIMIT
    from bench.metadata import hardware
    from launchers import same_machine
    from launchers.cli import _check_same_machine
    from launchers.sweep import expand, parse_config

    doc = tiny_sweep(seeds=2)
    cfg = parse_config(doc)
    first, second = expand(cfg)
    sweep_dir = tmp_path / "res" / cfg.name
    here = hardware()["cpu_type"]
    runs = sweep_dir / "trials" / first.trial_id / "runs.parquet"

    def finished(peak: float, source: str = same_machine.MEASURED, kind: str = here, gpu: str = "") -> None:
        hw = {"cpu_type": kind, "machine_type": f"{kind} + {gpu}" if gpu else kind}
        write_table(runs, [run_row(sweep_name=cfg.name, trial_id=first.trial_id, peak_flops_per_s=peak,
                                   peak_flops_source=source, hardware_json=json.dumps(hw))])

    # The first trial finished on this kind of machine, but one a thousand times faster.
    finished(1e15)
    proc = run_cli("sweep", str(write_yaml(doc)), "--storage", str(tmp_path / "res"))
    assert_usage_error(proc, "GFLOP/s", "--allow-other-machine", "1 finished trial")
    assert not (sweep_dir / "trials" / second.trial_id).exists() and not (sweep_dir / "sweep.json").exists()
    assert f"{SPEED_SPREAD_LIMIT}x" in run_cli("sweep", "--help").stdout
    # Accepted with the flag: a warning, and the sweep goes on.
    _check_same_machine(cfg, sweep_dir, [first.trial_id], allow=True)
    assert "resuming anyway" in capsys.readouterr().err

    # Another kind of CPU (a GPU trial's datasheet rate: only the CPU type is compared) is refused
    # too; "another" is whichever of two real types this machine is not (CI hosts are either).
    zen4 = "AMD EPYC (AuthenticAMD cpu family 25 model 17; avx512f)"
    other = zen4 if here != zen4 else "AMD EPYC (AuthenticAMD cpu family 23 model 1; avx2)"
    finished(989e12, "datasheet:H100", other, "NVIDIA H100")
    with pytest.raises(UsageError, match=rf"this machine's CPU is .* but the finished trials of this sweep ran on .*{re.escape(other)}"):
        _check_same_machine(cfg, sweep_dir, [first.trial_id], allow=False)
    # The same CPU, a GPU this process may not see, no measured peak: nothing to refuse. So is a
    # row of c0708ea, whose machine_type alone names the CPU; an unfinished trial is not read.
    finished(989e12, "datasheet:H100", gpu="NVIDIA H100")
    _check_same_machine(cfg, sweep_dir, [first.trial_id], allow=False)
    write_table(runs, [run_row(trial_id=first.trial_id, hardware_json=json.dumps({"machine_type": f"{zen4} + NVIDIA H100"}))])
    assert same_machine.recorded(sweep_dir, [first.trial_id]).types == [zen4]
    assert not same_machine.recorded(sweep_dir, [second.trial_id])
    # Within the limit either way counts as alike; beyond it, not.
    limit = SPEED_SPREAD_LIMIT
    assert same_machine.MachineCheck(here, (here,), here=100e9, recorded=100e9 * limit, trials=3).alike
    assert same_machine.MachineCheck(here, (here,), here=100e9 * limit, recorded=100e9, trials=3).alike
    assert not same_machine.MachineCheck(here, (here,), here=34e9, recorded=106e9, trials=70).alike


def test_the_machine_type_tells_cpu_generations_apart(tmp_path):
    from bench.metadata import cpu_info, cpu_type, machine_type

    def cpuinfo(family: str, model: str, flags: str) -> dict[str, str]:
        path = tmp_path / f"cpuinfo-{family}"
        block = (f"processor\t: {{n}}\nvendor_id\t: AuthenticAMD\ncpu family\t: {family}\nmodel\t\t: {model}\n"
                 f"model name\t: AMD EPYC\nflags\t\t: fpu sse4_2 {flags}\n\n")
        path.write_text(block.format(n=0) + block.format(n=1).replace("AMD EPYC", "other"))
        return cpu_info(str(path))

    zen1, zen4 = cpuinfo("23", "1", "avx avx2 fma"), cpuinfo("25", "17", "avx avx2 avx512f")
    assert zen1["model name"] == "AMD EPYC"  # the first processor's block only
    assert cpu_type(zen1) == machine_type(cpu_type(zen1)) == "AMD EPYC (AuthenticAMD cpu family 23 model 1; avx2)"
    assert machine_type(cpu_type(zen4), "NVIDIA H100 80GB HBM3") == (
        "AMD EPYC (AuthenticAMD cpu family 25 model 17; avx512f) + NVIDIA H100 80GB HBM3")
    assert cpu_type(cpu_info(str(tmp_path / "absent"))) == "unknown"
