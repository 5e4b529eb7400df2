"""The validation gate through the command line: every problem (config, storage, resources,
offline hub names, output paths) in one message, exit status 2, nothing created, Ray not started.

Most cases call ``launchers.cli.main`` in this process (an exception would fail the test just as
a traceback would fail a user); the offline-hub case runs in a subprocess, because the Hugging
Face libraries read their cache location and offline switch when first imported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, tiny_sweep

from launchers import cli, gate, ray_runner


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def listing(err: str) -> list[str]:
    """The problem lines of a ConfigError message."""
    return [line for line in err.splitlines() if line.startswith("  - ")]


def test_config_storage_and_resources_are_reported_together_and_nothing_is_created(write_yaml, tmp_path, capsys):
    storage = tmp_path / "results"
    storage.mkdir()
    (storage / "tiny").write_text("a file where the sweep directory would go")
    doc = tiny_sweep()
    doc["training"]["stepz"] = 3
    doc["resources"].update(num_workers=64, cpus_per_worker=1.0)
    path = write_yaml(doc)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, _, err = run(capsys, "sweep", str(path), "--storage", str(storage))
    assert code == 2
    problems = listing(err)
    assert len(problems) == 3, err
    assert any("training.stepz: unknown key" in p for p in problems)
    assert any("is a file, not a sweep directory" in p for p in problems)
    assert any("resources: one trial needs 64.01 CPU" in p for p in problems)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    # `config` reports exactly what `sweep` would.
    code, _, config_err = run(capsys, "config", str(path), "--storage", str(storage))
    assert code == 2 and listing(config_err) == problems


def test_a_resource_refusal_creates_no_sweep_directory(write_yaml, tmp_path, capsys):
    doc = tiny_sweep()
    doc["resources"]["use_gpu"] = True
    code, _, err = run(capsys, "sweep", str(write_yaml(doc)), "--storage", str(tmp_path / "out"))
    assert code == 2 and "use_gpu" in err
    assert not (tmp_path / "out").exists()


def test_storage_that_cannot_be_written(write_yaml, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, err = run(capsys, "config", str(write_yaml(tiny_sweep())), "--storage", str(blocker / "sub"))
    assert code == 2 and "is not writable" in err and "is a file, not a directory" in err
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, _, err = run(capsys, "config", str(write_yaml(tiny_sweep())), "--storage", str(locked / "deep"))
        assert code == 2 and "not writable" in err
        assert list(locked.iterdir()) == []


def test_another_configs_results_are_refused_by_the_gate(write_yaml, tmp_path, capsys):
    storage = tmp_path / "results"
    (storage / "tiny").mkdir(parents=True)
    (storage / "tiny" / "sweep.json").write_text(json.dumps({"name": "tiny", "fingerprint": "other", "trials": []}))
    path = str(write_yaml(tiny_sweep()))
    code, _, err = run(capsys, "config", path, "--storage", str(storage))
    assert code == 2 and "holds results of a different config" in err and "--force-new" in err
    assert run(capsys, "config", path, "--storage", str(storage), "--force-new")[0] == 0
    (storage / "tiny" / "sweep.json").write_bytes(b"\xff\xfe not json")
    code, _, err = run(capsys, "config", path, "--storage", str(storage))
    assert code == 2 and "is not a sweep record written by specbench" in err


def test_the_gate_comes_before_the_other_ray_guard_which_explains_address(write_yaml, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ray_runner, "other_local_ray", lambda: ["127.0.0.1:6379"])
    bad = tiny_sweep()
    bad["training"]["steps"] = 0
    code, _, err = run(capsys, "sweep", str(write_yaml(bad)), "--storage", str(tmp_path / "out"))
    assert code == 2 and "training.steps" in err and "another Ray" not in err
    code, _, err = run(capsys, "sweep", str(write_yaml(tiny_sweep())), "--storage", str(tmp_path / "out"))
    assert code == 2 and "another Ray instance is running" in err
    assert "--address 127.0.0.1:6379" in err and "ray stop" not in err
    assert not (tmp_path / "out").exists()


def test_billion_laughs_grid_ends_in_a_short_message(write_yaml, tmp_path, capsys):
    lines = ["l0: &l0 [0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008, 0.009]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)]
    doc = "\n".join(lines) + "\n" + yaml.safe_dump(tiny_sweep())  # anchors before their use
    doc = doc.replace("settings:\n    lr: 0.003", "grid:\n    lr: *l9")
    code, _, err = run(capsys, "config", str(write_yaml(doc)), "--storage", str(tmp_path / "out"))
    assert code == 2 and "expands to more than" in err and len(err) < 1000


def test_unreadable_files_and_directories_given_as_config(write_yaml, tmp_path, capsys):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\n")
    for argv, needle in [
        (["sweep", str(tmp_path)], "is a directory, not a config file"),
        (["config", str(latin)], "is not UTF-8 text"),
        (["train", str(tmp_path / "none.yaml")], "file not found"),
        (["verify", str(tmp_path), "--claims", str(latin)], "not UTF-8 text"),
        (["verify", str(tmp_path), "--claims", str(tmp_path)], "is a directory"),
    ]:
        code, _, err = run(capsys, *argv)
        assert code == 2 and needle in err, (argv, err)


def test_output_paths_are_checked_before_any_work(write_yaml, tmp_path, capsys):
    cfg = str(write_yaml(tiny_sweep()))
    file = tmp_path / "file"
    file.write_text("x")
    slurm = ["cluster", "slurm", cfg, "--nodes", "1", "--cpus-per-node", "4", "--time", "1:00:00", "--partition", "p"]
    for argv, needle in [
        ([*slurm, "-o", str(tmp_path / "no" / "dir" / "job.sbatch")], "does not exist"),
        ([*slurm, "-o", str(tmp_path)], "is a directory"),
        (["report", str(tmp_path), "--out", str(file / "report")], "is a file, not a directory"),
        (["consolidate", str(tmp_path), "--out", str(file)], "is a file, not a directory"),
    ]:
        code, _, err = run(capsys, *argv)
        assert code == 2 and needle in err, (argv, err)
    assert not (tmp_path / "no").exists()


def test_command_line_overrides_are_validated_like_the_file(write_yaml, tmp_path, capsys):
    cfg = str(write_yaml(tiny_sweep()))
    code, out, err = run(capsys, "config", cfg, "training.steps=7", "resources.num_workers=1", "--show",
                         "--storage", str(tmp_path))
    assert code == 0, err
    shown = json.loads(out[: out.rindex("}") + 1])
    assert shown["training"]["steps"] == 7 and shown["resources"]["num_workers"] == 1
    code, _, err = run(capsys, "config", cfg, "training.steps=many", "trainng.steps=1", "--storage", str(tmp_path))
    assert code == 2 and "training.steps: expected an integer, got 'many'" in err and "trainng: unknown key" in err


def test_status_and_report_accept_the_config_and_use_its_storage(write_yaml, tmp_path, capsys):
    storage = tmp_path / "store"
    doc = tiny_sweep(seeds=2, storage=str(storage))
    path = str(write_yaml(doc))
    code, _, err = run(capsys, "status", path)
    assert code == 2 and str(storage / "tiny") in err
    checked = gate.check_sweep(path)
    (storage / "tiny").mkdir(parents=True)
    cli._write_sweep_record(storage / "tiny", checked.cfg, checked.trials, checked.fingerprints[0])
    code, out, err = run(capsys, "status", path)
    assert code == 0, err
    assert "2 pending" in out and all(t.trial_id in out for t in checked.trials)
    code, _, err = run(capsys, "report", path)
    assert code == 2 and "Traceback" not in err


def test_config_lists_trials_that_differ_only_in_model_args(write_yaml, capsys):
    doc = tiny_sweep(workloads=[{"model": "builtin:cnn", "dataset": "sklearn:digits", "model_args": {"hidden": h}}
                                for h in (32, 64)])
    code, out, _ = run(capsys, "config", str(write_yaml(doc)))
    assert code == 0
    assert "builtin:cnn{hidden=32} / sklearn:digits" in out and "builtin:cnn{hidden=64} / sklearn:digits" in out


def test_config_show_prints_every_nested_section(capsys):
    code, out, _ = run(capsys, "config", "--show")
    assert code == 0 and "{...}" not in out
    for section, key in [("tuning:", "budget"), ("probes:", "at_steps"), ("probes.settings:", "top_k"),
                         ("optimizers[].search.<key>:", "low"), ("training.lr_schedule:", "warmup_steps"),
                         ("optimizers[].settings for name: spectral_newton", "damping")]:
        body = out.split(f"\n{section}\n", 1)
        assert len(body) == 2 and f"  {key}:" in body[1].split("\n\n", 1)[0], section
    assert "(optimizers[].probes: the same keys as probes)" in out


def test_list_shows_what_the_registries_hold(capsys):
    code, out, _ = run(capsys, "list", "models")
    assert code == 0
    assert "builtin:cnn  28k parameters" in out and "124m 124.4M" in out and "timm:resnet18" in out
    code, out, _ = run(capsys, "list", "datasets")
    assert code == 0 and "sklearn:digits" in out and "hf:<dataset>" in out and "tokenizer:" in out
    code, out, _ = run(capsys, "list", "optimizers")
    assert code == 0 and "spectral_newton" in out and "  damping: 0.1" in out


def _actions(parser: argparse.ArgumentParser, path: str):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{path} {name}")
        else:
            yield path, action


def test_every_flag_of_every_command_has_help():
    missing = [f"{path}: {action.dest}" for path, action in _actions(cli.build_parser(), "specbench")
               if not action.help and not isinstance(action, argparse._HelpAction)]
    assert not missing, missing


def test_version_and_an_uncached_hub_dataset_offline(tmp_path):
    """Subprocesses: `--version` as users call it, and the offline hub check with a private cache
    in which one dataset has been prepared by `datasets` itself."""
    version = subprocess.run([sys.executable, "-m", "launchers.cli", "--version"], capture_output=True, text=True,
                             cwd=REPO, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("specbench ")

    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.packaged_modules.parquet.parquet import Parquet

    cache = tmp_path / "hf" / "datasets"
    pq.write_table(pa.table({"text": ["some words"] * 8}), tmp_path / "train.parquet")
    builder = Parquet(cache_dir=str(cache), dataset_name="cached_corpus", config_name="default",
                      data_files={"train": str(tmp_path / "train.parquet")}, hash="0")
    builder.download_and_prepare()
    # Where a hub download of `cached_corpus` (config "default") would have put its Arrow files.
    (cache / "cached_corpus" / "default").mkdir()
    for version_dir in (cache / "cached_corpus").glob("default-*/*"):
        version_dir.rename(cache / "cached_corpus" / "default" / version_dir.name)
    doc = tiny_sweep(workloads=[
        {"model": "builtin:transformer", "dataset": "hf:cached_corpus"},
        {"model": "builtin:transformer", "dataset": "hf:someone/not_cached"},
        {"model": "builtin:transformer", "dataset": str(tmp_path / "train.parquet"), "dataset_args": {"tokenizer": "gpt2"}},
    ])
    path = tmp_path / "offline.yaml"
    path.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "launchers.cli", "sweep", str(path), "--storage",
                           str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    problems = listing(proc.stderr)
    assert len(problems) == 2, proc.stderr
    assert "workloads[1].dataset: dataset 'hf:someone/not_cached' cannot be fetched offline" in problems[0]
    assert "workloads[2].dataset: tokenizer 'gpt2' cannot be fetched offline" in problems[1]
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", ["--help"])
def test_help_of_each_command_runs(flag, capsys):
    for command in ("sweep", "train", "probe", "config", "list", "status", "report"):
        with pytest.raises(SystemExit) as info:
            cli.main([command, flag])
        assert info.value.code == 0
    assert "KEY=VALUE" in capsys.readouterr().out


def test_flag_mistakes_are_listed_with_the_config_ones(write_yaml, tmp_path, capsys):
    doc = tiny_sweep()
    doc["seeds"] = 0
    cfg = str(write_yaml(doc))
    code, _, err = run(capsys, "train", cfg, "--workers", "0", "--storage", str(tmp_path / "out"))
    assert code == 2 and "--workers must be at least 1" in err and "seeds" in err
    code, _, err = run(capsys, "probe", cfg, "--checkpoint", str(tmp_path / "none"), "--storage", str(tmp_path / "out"))
    assert code == 2 and "does not exist" in err and "seeds" in err
    assert not (tmp_path / "out").exists()


def test_a_stopped_sweep_resumes_under_new_scheduling_but_not_under_a_new_experiment(write_yaml, tmp_path):
    storage = tmp_path / "store"
    path = str(write_yaml(tiny_sweep(storage=str(storage))))
    checked = gate.check_sweep(path)
    assert len(checked.fingerprints) == 2  # tiny_sweep sets cpus_per_worker: the two versions differ
    (storage / "tiny").mkdir(parents=True)
    rescheduled = ["resources.max_concurrent_trials=4", "resources.cpus_per_worker=0.2", "resources.max_retries=0"]
    # A record as an earlier specbench wrote it (its fingerprint counted cpus_per_worker): the
    # same file resumes it (and the sweep then rewrites the record with today's fingerprint).
    cli._write_sweep_record(storage / "tiny", checked.cfg, checked.trials, checked.fingerprints[-1])
    assert gate.check_sweep(path).fingerprints == checked.fingerprints
    with pytest.raises(gate.ConfigError, match="different config"):
        gate.check_sweep(path, rescheduled)
    cli._write_sweep_record(storage / "tiny", checked.cfg, checked.trials, checked.fingerprints[0])
    more = gate.check_sweep(path, rescheduled)
    assert [t.trial_id for t in more.trials] == [t.trial_id for t in checked.trials]
    with pytest.raises(gate.ConfigError, match="different config"):
        gate.check_sweep(path, ["resources.num_workers=1"])
