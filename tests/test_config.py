"""Sweep validation and expansion: every problem reported at once, deterministic trial ids."""

from __future__ import annotations

import copy
import itertools

import pytest
from conftest import tiny_sweep

from bench.config import grid_points
from launchers.sweep import ConfigError, expand, parse_config, sweep_fingerprints


def problems_of(doc) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(doc, "test.yaml")
    return info.value.problems


def test_valid_config_parses_with_defaults():
    cfg = parse_config(tiny_sweep())
    assert cfg.training.zero_stage == 0
    assert cfg.training.lr_schedule.kind == "cosine"
    assert cfg.resources.num_workers == 2


def test_unknown_keys_are_reported_with_their_location():
    doc = tiny_sweep()
    doc["trainning"] = {}
    doc["training"]["stepz"] = 3
    probs = problems_of(doc)
    assert any(p.startswith("trainning: unknown key") for p in probs)
    assert any(p.startswith("training.stepz: unknown key") for p in probs)


def test_wrong_types_are_reported():
    doc = tiny_sweep()
    doc["training"]["steps"] = "many"
    doc["resources"]["num_workers"] = 0
    probs = problems_of(doc)
    assert any(p.startswith("training.steps") for p in probs)
    assert any(p.startswith("resources.num_workers") for p in probs)


def test_unknown_registry_names_are_all_listed_together():
    doc = tiny_sweep(
        workloads=[{"model": "nosuch:model", "dataset": "nosuch:data"}],
        optimizers=[{"name": "sgdd"}, {"name": "adamw", "settings": {"lrr": 1.0}}],
    )
    probs = problems_of(doc)
    text = "\n".join(probs)
    assert "workloads[0].model" in text and "nosuch:model" in text
    assert "workloads[0].dataset" in text and "nosuch:data" in text
    assert "unknown optimizer 'sgdd'" in text
    assert "lrr" in text
    assert len(probs) >= 4


def test_bad_grid_value_is_reported():
    doc = tiny_sweep(optimizers=[{"name": "spectral_newton", "grid": {"method": ["svd", "qr"]}}])
    assert any("qr" in p for p in problems_of(doc))


def test_matrix_optimizer_under_zero_needs_the_sharded_distribution():
    doc = tiny_sweep(optimizers=[{"name": "spectral_newton"}, {"name": "soap", "grid": {"distribution": ["sharded",
                                                                                                        "redundant"]}}])
    doc["training"]["zero_stage"] = 2
    (msg,) = [p for p in problems_of(doc) if "zero_stage" in p]  # spectral_newton (sharded) is accepted
    assert msg.startswith("optimizers[1] (soap): distribution 'redundant'") and "training.zero_stage=2" in msg


def test_grid_and_seeds_expand_to_cartesian_product_with_stable_ids():
    doc = tiny_sweep(
        seeds=2,
        optimizers=[
            {"name": "adamw", "grid": {"lr": [0.001, 0.003], "weight_decay": [0.0, 0.1]}},
            {"name": "spectral_newton"},
        ],
    )
    trials = expand(parse_config(doc))
    assert len(trials) == (4 + 1) * 2
    assert len({t.trial_id for t in trials}) == len(trials)
    assert [t.trial_index for t in trials] == list(range(len(trials)))
    # Same seed index -> same seed for every optimizer (paired comparison).
    assert {t.seed for t in trials if t.seed_index == 0} == {trials[0].seed}
    # Adding an unrelated optimizer keeps the ids of the others.
    doc2 = dict(doc, optimizers=doc["optimizers"] + [{"name": "adamw", "settings": {"lr": 0.1}}])
    ids2 = {t.trial_id for t in expand(parse_config(doc2))}
    assert {t.trial_id for t in trials} <= ids2
    assert trials[0].optimizer_label == "adamw(lr=0.001,weight_decay=0.0)"


def test_changing_training_changes_ids():
    a = expand(parse_config(tiny_sweep()))
    doc = tiny_sweep()
    doc["training"]["steps"] = 7
    b = expand(parse_config(doc))
    assert a[0].trial_id != b[0].trial_id


def test_duplicate_trials_are_rejected():
    doc = tiny_sweep(optimizers=[{"name": "adamw"}, {"name": "adamw"}])
    assert any("identical trials" in p for p in problems_of(doc))


def test_grid_points_order():
    assert grid_points({"b": [1, 2], "a": ["x"]}) == [{"a": "x", "b": 1}, {"a": "x", "b": 2}]
    assert grid_points({}) == [{}]


def test_halton_tuning_gives_every_optimizer_the_same_budget_within_bounds():
    doc = tiny_sweep(
        seeds=2,
        tuning={"method": "halton", "budget": 4},
        optimizers=[
            {"name": "adamw", "search": {"lr": {"low": 1e-4, "high": 1e-1, "log": True},
                                          "weight_decay": {"values": [0.0, 0.1]}}},
            {"name": "spectral_newton", "search": {"lr": {"low": 0.01, "high": 0.2, "log": True}}},
        ],
    )
    cfg = parse_config(doc)
    trials = expand(cfg)
    for name in ("adamw", "spectral_newton"):
        mine = [t for t in trials if t.optimizer == name]
        assert len(mine) == 4 * 2
        assert sorted({t.tuning_index for t in mine}) == [0, 1, 2, 3]
        lrs = {t.optimizer_settings["lr"] for t in mine}
        assert len(lrs) == 4  # quasi-random points are distinct
        assert mine[0].search_space["lr"]["log"] is True
    adamw = [t for t in trials if t.optimizer == "adamw"]
    # The setting's own domain travels with the searched range (the report's hard ends).
    assert adamw[0].search_space["weight_decay"] == {"values": [0.0, 0.1], "log": False, "integer": False, "domain_min": 0}
    assert adamw[0].search_space["lr"] == {"low": 1e-4, "high": 1e-1, "log": True, "integer": False}
    assert all(1e-4 <= t.optimizer_settings["lr"] <= 1e-1 for t in adamw)
    assert {t.optimizer_settings["weight_decay"] for t in adamw} <= {0.0, 0.1}
    # The sample is a function of the seed: same config, same points; another seed, others.
    assert [t.optimizer_settings for t in expand(parse_config(doc))] == [t.optimizer_settings for t in trials]
    other = expand(parse_config(dict(doc, tuning={"method": "halton", "budget": 4, "seed": 99})))
    assert [t.optimizer_settings for t in other] != [t.optimizer_settings for t in trials]


def test_tuning_mistakes_are_reported():
    no_budget = tiny_sweep(optimizers=[{"name": "adamw", "search": {"lr": {"low": 1e-3, "high": 1e-2}}}])
    assert any("tuning.budget is 0" in p for p in problems_of(no_budget))
    unequal = tiny_sweep(
        tuning={"method": "grid", "budget": 2},
        optimizers=[{"name": "adamw", "search": {"lr": {"values": [0.1, 0.2, 0.3]}}}],
    )
    assert any("3 points but tuning.budget is 2" in p for p in problems_of(unequal))
    bad_axis = tiny_sweep(tuning={"budget": 2},
                          optimizers=[{"name": "adamw", "search": {"lr": {"low": 0.0, "high": 1.0, "log": True}}}])
    assert any("log-scale" in p for p in problems_of(bad_axis))
    bad_value = tiny_sweep(tuning={"budget": 2},
                           optimizers=[{"name": "spectral_newton", "search": {"method": {"values": ["svd", "qr"]}}}])
    assert any("qr" in p for p in problems_of(bad_value))


def test_an_entry_probe_schedule_replaces_the_sweeps_for_its_trials_only():
    """Only the measured-α entry probes; its trials carry its schedule (and their ids change with
    it), the other entries' trials run without probes."""
    measured = {"name": "spectral_newton", "label": "sn-measured",
                "settings": {"alpha_policy": "measured"}, "probes": {"at_steps": [2]}}
    trials = expand(parse_config(tiny_sweep(optimizers=[{"name": "adamw"}, measured])))
    by_entry = {t.optimizer_entry: t for t in trials}
    assert set(by_entry) == {"adamw", "sn-measured"}
    assert not by_entry["adamw"].probes.enabled
    assert by_entry["sn-measured"].probes.at_steps == [2]
    other = expand(parse_config(tiny_sweep(optimizers=[{"name": "adamw"}, {**measured, "probes": {"at_steps": [3]}}])))
    assert {t.trial_id for t in other} & {t.trial_id for t in trials} == {by_entry["adamw"].trial_id}


def test_measured_alpha_without_any_probe_is_refused():
    doc = tiny_sweep(optimizers=[{"name": "spectral_newton", "settings": {"alpha_policy": "measured"}}])
    assert any("alpha_policy 'measured' needs a probe schedule" in p for p in problems_of(doc))
    with_sweep_probes = tiny_sweep(optimizers=doc["optimizers"], probes={"at_end": True})
    assert parse_config(with_sweep_probes).probes.at_end


def test_concurrent_trials_default_to_the_worker_groups_that_fit():
    from bench.config import ResourcesConfig
    from launchers.ray_runner import concurrent_trials

    cpu = {"CPU": 2.0}
    assert concurrent_trials(ResourcesConfig(num_workers=2, cpus_per_worker=0.49), cpu) == 2
    assert concurrent_trials(ResourcesConfig(num_workers=1, cpus_per_worker=0.99), cpu) == 2
    assert concurrent_trials(ResourcesConfig(num_workers=1, cpus_per_worker=1.0), cpu) == 1
    assert concurrent_trials(ResourcesConfig(num_workers=8, use_gpu=True), {"CPU": 64.0, "GPU": 16.0}) == 2
    assert concurrent_trials(ResourcesConfig(num_workers=2, max_concurrent_trials=5), cpu) == 5
    assert concurrent_trials(ResourcesConfig(num_workers=4, cpus_per_worker=1.0), cpu) == 1
    # Memory reservations cap it too: 2 workers × 5 GiB fit twice in 22 GiB, not three times.
    big = {"CPU": 16.0, "memory": 22.0 * 2**30}
    assert concurrent_trials(ResourcesConfig(num_workers=2, cpus_per_worker=1.0, memory_per_worker_gib=5), big) == 2
    assert concurrent_trials(ResourcesConfig(num_workers=2, cpus_per_worker=1.0), big) == 7  # 16 / 2.01 CPU


def test_launch_order_interleaves_entries_so_a_memory_heavy_entry_never_pairs_with_itself():
    from launchers.ray_runner import launch_order

    doc = tiny_sweep(
        seeds=2,
        optimizers=[
            {"name": "adamw", "search": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}}},
            {"name": "muon", "search": {"lr": {"low": 1e-3, "high": 1e-1, "log": True}}},
            {"name": "adamw", "label": "adamw[heavy]", "memory_per_worker_gib": 10,
             "search": {"lr": {"low": 2e-4, "high": 2e-2, "log": True}}},
        ],
        tuning={"method": "halton", "budget": 3, "finalists": 0},
    )
    trials = expand(parse_config(doc, "t.yaml"))
    order = launch_order(trials)
    # A permutation: the same trials, each once, and each entry's own trials in sweep order.
    assert sorted(t.trial_id for t in order) == sorted(t.trial_id for t in trials)
    entries = [t.optimizer_entry for t in order]
    for entry in set(entries):
        assert [t.trial_id for t in order if t.optimizer_entry == entry] == \
            [t.trial_id for t in trials if t.optimizer_entry == entry]
    # Sweep order runs an entry's 6 trials back to back; launch order takes one of each in turn.
    assert [t.optimizer_entry for t in trials][:2] == ["adamw", "adamw"]
    assert entries == ["adamw", "muon", "adamw[heavy]"] * 6
    heavy = [i for i, t in enumerate(order) if t.resources.memory_per_worker_gib == 10]
    assert len(heavy) == 6 and min(b - a for a, b in itertools.pairwise(heavy)) == 3
    # Uneven entries: the longer one's tail comes last, nothing is dropped or repeated.
    uneven = launch_order(trials[:6] + trials[6:8])
    assert [t.optimizer_entry for t in uneven] == ["adamw", "muon"] * 2 + ["adamw"] * 4
    assert launch_order([]) == []


def test_memory_reservations_reach_ray_and_are_checked_against_the_cluster():
    from bench.config import ResourcesConfig
    from launchers.ray_runner import GIB, resource_problems, worker_resources

    assert worker_resources(ResourcesConfig(cpus_per_worker=0.5)) == {"CPU": 0.5}
    assert worker_resources(ResourcesConfig(cpus_per_worker=0.5, memory_per_worker_gib=1.5)) == {
        "CPU": 0.5, "memory": 1.5 * GIB}
    assert worker_resources(ResourcesConfig(use_gpu=True, memory_per_worker_gib=2)) == {"memory": 2 * GIB}
    node = {"CPU": 8.0, "memory": 20.0 * GIB}
    fits = ResourcesConfig(num_workers=2, cpus_per_worker=1.0, memory_per_worker_gib=10)
    assert resource_problems(fits, node, [node]) == []
    too_much = ResourcesConfig(num_workers=2, cpus_per_worker=1.0, memory_per_worker_gib=11)
    (problem,) = resource_problems(too_much, node, [node])
    assert "memory_per_worker_gib 11 × 2 workers" in problem and "reserves 22 GiB" in problem and "20.0 GiB" in problem
    two_nodes = {"CPU": 16.0, "memory": 40.0 * GIB}
    assert resource_problems(too_much, two_nodes, [node, node]) == []  # a worker on each node
    assert resource_problems(too_much, {"CPU": 8.0}, [{"CPU": 8.0}]) == []  # memory unknown: not judged here
    one_big = ResourcesConfig(num_workers=1, cpus_per_worker=1.0, memory_per_worker_gib=21)
    (problem,) = resource_problems(one_big, two_nodes, [node, node])
    assert "memory_per_worker_gib 21: no node has that much" in problem


def test_a_kill_by_rays_memory_monitor_is_named_with_what_to_change():
    from launchers.ray_runner import short_error

    # The parts of a Ray 2.60 WorkerGroupError text that name the kill (abridged from a real one).
    text = "\n".join([
        "ray.train.WorkerGroupError: Training failed due to worker errors:",
        "[Rank 0 Error Snippet]:",
        "A worker health check failed.",
        "5 worker(s) were killed due to the node running low on memory. Memory on the node (IP: 127.0.0.1, "
        "ID: 5d37) was 21.90GB used / 23.54GB limit (0.930139)",
        "OOM kill reason: Memory usage 24133050368B exceeded threshold of 24012384256B",
        "Refer to the documentation on how to address the out of memory issue: https://docs.ray.io/... "
        "Consider provisioning more memory on this node or reducing task parallelism by requesting more CPUs",
    ])
    message = short_error(text)
    assert message.startswith("Ray's memory monitor killed a worker") and "21.90GB of 23.54GB" in message
    assert "memory_per_worker_gib" in message and "\n" not in message
    assert short_error("Traceback ...\nValueError: bad lr") == "ValueError: bad lr"


# ---------------------------------------------------------------------- types as written (YAML 1.2)
def test_exponent_numbers_are_floats_and_the_same_trial_as_decimals(write_yaml):
    """`lr: 1e-3` is the float 0.001 (YAML 1.1 read a string), so the trial, its id and its label
    equal those of `lr: 0.001`; an int for a float setting is the same trial as the float."""
    from launchers.sweep import load_config

    def trial(text: str):
        doc = "\n".join(["name: t", "workloads: [{model: builtin:cnn, dataset: sklearn:digits}]",
                         f"optimizers: [{{name: adamw, settings: {{{text}}}, grid: {{weight_decay: [0, 1e-2]}}}}]"])
        return expand(load_config(write_yaml(doc)))

    exp, dec, ints = trial("lr: 1e-3"), trial("lr: 0.001"), trial("lr: 1")
    assert exp[0].optimizer_settings["lr"] == 0.001 and isinstance(exp[0].optimizer_settings["lr"], float)
    assert [t.trial_id for t in exp] == [t.trial_id for t in dec]
    assert exp[0].optimizer_label == "adamw(weight_decay=0.0)"  # the validated value, not the int 0
    assert ints[0].optimizer_settings["lr"] == 1.0 and ints[0].trial_id == trial("lr: 1.0")[0].trial_id


def test_quoted_numbers_and_yes_are_refused_where_numbers_and_booleans_belong():
    doc = tiny_sweep(
        seeds="2",
        optimizers=[{"name": "spectral_newton", "settings": {"lr": "0.02", "nesterov": "yes"},
                     "grid": {"damping": [0.1, "0.2"]}}],
        workloads=[{"model": "hf:gpt2", "dataset": "builtin:text",
                    "model_args": {"size": "tiny", "n_layer": "4", "scale_attn_weights": "yes"}}],
    )
    doc["training"].update(steps=1e3, keep_checkpoint="yes")
    text = "\n".join(problems_of(doc))
    for needle in [
        "seeds: expected an integer, got the string '2'; numbers are written without quotes",
        "training.steps: expected an integer, got 1000.0",
        "training.keep_checkpoint: expected true or false, got the string 'yes'",
        "optimizers[0].settings.lr: expected a number, got the string '0.02'",
        "optimizers[0].settings.nesterov: expected true or false, got the string 'yes'",
        "optimizers[0].settings.damping: expected a number, got the string '0.2'",
        "n_layer must be an integer like its default 12, got '4'",
        "scale_attn_weights must be true or false",
    ]:
        assert needle in text, text
    # "yes" where a string belongs is just a string.
    assert parse_config(tiny_sweep(optimizers=[{"name": "adamw", "label": "yes"}])).optimizers[0].label == "yes"


def test_messages_never_echo_a_long_value():
    huge = "x" * 1_000_000
    doc = tiny_sweep(workloads=[{"model": huge, "dataset": "hf:" + huge}], name=huge)
    doc["training"]["precision"] = huge
    doc["optimizers"][0]["settings"]["lr"] = huge
    probs = problems_of(doc)
    assert len(probs) >= 4 and all(len(p) < 400 for p in probs), [p[:200] for p in probs]


# ----------------------------------------------------------------------------- command-line overrides
def test_overrides_set_nested_keys_and_list_items_with_yaml_values():
    doc = tiny_sweep(optimizers=[{"name": "adamw"}, {"name": "spectral_newton"}])
    cfg = parse_config(doc, assignments=["training.steps=20", "optimizers.1.settings.lr=1e-3",
                                         "resources.num_workers=1", "probes.at_steps=[2, 4]"])
    assert cfg.training.steps == 20 and cfg.resources.num_workers == 1 and cfg.probes.at_steps == [2, 4]
    assert cfg.optimizers[1].settings == {"lr": 0.001}
    assert doc["training"]["steps"] == 6  # the caller's document is untouched


def test_override_mistakes_are_reported_with_the_file_problems():
    doc = tiny_sweep()
    doc["training"]["bogus"] = 1
    probs = problems_of_assign(doc, ["training.stepz=3", "optimizers.5.name=x", "name.first=y", "noequals",
                                     'seeds="3"'])
    text = "\n".join(probs)
    assert "training.stepz: unknown key" in text and "training.bogus: unknown key" in text
    assert "override optimizers.5.name=x: optimizers is a list of 1" in text
    assert "override name.first=y: name is 'tiny', not a mapping or list" in text
    assert "override noequals: expected KEY.PATH=VALUE" in text
    assert "seeds: expected an integer, got the string '3'" in text


def problems_of_assign(doc, assignments) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(doc, "test.yaml", assignments=assignments)
    return info.value.problems


def test_stall_timeout_is_validated_and_changing_it_keeps_the_sweep_resumable():
    base = tiny_sweep()
    assert parse_config(base).resources.stall_timeout_s == 1800  # the default: never wait forever
    longer = tiny_sweep()
    longer["resources"]["stall_timeout_s"] = 7200
    never = tiny_sweep()
    never["resources"]["stall_timeout_s"] = None
    assert (sweep_fingerprints(parse_config(base))[0] == sweep_fingerprints(parse_config(longer))[0]
            == sweep_fingerprints(parse_config(never))[0])
    bad = tiny_sweep()
    bad["resources"]["stall_timeout_s"] = 0
    with pytest.raises(ConfigError, match="stall_timeout_s"):
        parse_config(bad)


def _fingerprint_before_scheduling_keys(cfg) -> str:
    """The sweep fingerprint as specbench wrote it until 2026-12 (only stall_timeout_s left out),
    transcribed: records written then must still resume."""
    import hashlib
    import json

    doc = cfg.model_dump(mode="json", exclude_unset=True, exclude={"storage": True, "resources": {"stall_timeout_s"}})
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


@pytest.mark.parametrize("resources", [None, {}, {"num_workers": 2, "cpus_per_worker": 0.99},
                                       {"max_concurrent_trials": 2, "stall_timeout_s": 60}])
def test_scheduling_keys_leave_the_sweep_resumable_and_old_records_still_match(resources):
    doc = tiny_sweep()
    doc.pop("resources", None)
    if resources is not None:
        doc["resources"] = dict(resources)
    cfg = parse_config(doc)
    fingerprints = sweep_fingerprints(cfg)
    assert _fingerprint_before_scheduling_keys(cfg) in fingerprints

    rescheduled = copy.deepcopy(doc)
    rescheduled["resources"] = {**(resources or {}), "cpus_per_worker": 0.25, "max_concurrent_trials": 8,
                                "max_retries": 5, "stall_timeout_s": 7200}
    assert sweep_fingerprints(parse_config(rescheduled))[0] == fingerprints[0]
    for key, value in {"num_workers": 3, "use_gpu": True, "threads_per_worker": 2, "peak_tflops": 1.0}.items():
        changed = copy.deepcopy(doc)
        changed["resources"] = {**(resources or {}), key: value}
        # What a trial computes or records still tells sweeps apart, under either fingerprint.
        assert not set(sweep_fingerprints(parse_config(changed))) & set(fingerprints), key


def test_an_optimizer_entry_reserves_its_own_memory_without_changing_the_experiment(write_yaml):
    from launchers import gate
    from launchers.ray_runner import GIB

    doc = tiny_sweep(optimizers=[{"name": "adamw", "settings": {"lr": 0.003}},
                                 {"name": "spectral_newton", "memory_per_worker_gib": 6}])
    cfg = parse_config(doc)
    reserved = {t.optimizer: t.resources.memory_per_worker_gib for t in expand(cfg)}
    assert reserved == {"adamw": None, "spectral_newton": 6}
    plain = copy.deepcopy(doc)
    del plain["optimizers"][1]["memory_per_worker_gib"]
    # Same trials, same sweep: a rerun that adds or changes the reservation resumes.
    assert [t.trial_id for t in expand(parse_config(plain))] == [t.trial_id for t in expand(cfg)]
    assert sweep_fingerprints(parse_config(plain)) == sweep_fingerprints(cfg)  # records of either version

    small = {"CPU": 2.0, "memory": 10.0 * GIB}
    with pytest.raises(ConfigError) as info:
        gate.check_sweep(write_yaml(doc), cluster=(small, [small]), here=False)
    assert info.value.problems == ["optimizers.1.memory_per_worker_gib 6 × 2 workers: one trial reserves 12 GiB but "
                                   "the cluster's Ray memory is 10.0 GiB; lower memory_per_worker_gib or num_workers"]
