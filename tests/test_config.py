"""Sweep validation and expansion: every problem reported at once, deterministic trial ids."""

from __future__ import annotations

import pytest
from conftest import tiny_sweep

from bench.config import grid_points
from launchers.sweep import ConfigError, expand, parse_config


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


def test_matrix_optimizer_under_zero_is_rejected_with_reason():
    doc = tiny_sweep(optimizers=[{"name": "spectral_newton"}])
    doc["training"]["zero_stage"] = 2
    (msg,) = [p for p in problems_of(doc) if "zero_stage" in p]
    assert "flat 1-D partition" in msg and "zero_stage: 0" in msg


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
