"""The dataset registry resolves specs, rejects bad ones with messages that name the problem,
and checks loader args before anything is loaded."""

from __future__ import annotations

import pytest

from bench import data


@pytest.mark.parametrize("spec", ["sklearn:digits", "builtin:text", "hf:mnist", "hf:user/some-dataset"])
def test_known_specs_pass(spec: str) -> None:
    assert data.check_spec(spec) is None


def test_local_file_spec_needs_the_file(tmp_path) -> None:
    path = tmp_path / "train.parquet"
    assert "not found" in data.check_spec(str(path))
    path.write_bytes(b"")
    assert data.check_spec(str(path)) is None


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("foo:bar", "unknown scheme 'foo'"),
        ("data.txt", "not a known spec"),
        ("", "empty spec"),
        ("sklearn:iris", "unknown sklearn dataset 'iris'"),
        ("builtin:wiki", "unknown builtin dataset 'wiki'"),
        ("hf:", "empty dataset name"),
        ("hf:./missing_dir", "local dataset directory not found"),
        ("hf:bad name!", "neither a hub dataset id"),
    ],
)
def test_bad_specs_are_named(spec: str, needle: str) -> None:
    message = data.check_spec(spec)
    assert message is not None and needle in message
    assert repr(spec) in message  # the message says which spec it is about


def test_unknown_scheme_message_lists_the_alternatives() -> None:
    message = data.check_spec("foo:bar")
    for option in ("sklearn:digits", "builtin:text", "hf:<name>", ".parquet", ".jsonl"):
        assert option in message


def test_check_args_flags_unknown_names_with_a_suggestion() -> None:
    (problem,) = data.check_args("sklearn:digits", {"val_frac": 0.2})
    assert "unknown arg 'val_frac'" in problem and "did you mean 'val_fraction'" in problem


def test_check_args_flags_bad_values() -> None:
    assert data.check_args("sklearn:digits", {"val_fraction": 0.1}) == []
    assert (
        "must leave examples"
        in data.check_args("sklearn:digits", {"val_fraction": 0.6, "test_fraction": 0.5})[0]
    )
    assert "seq_len" in data.check_args("builtin:text", {"seq_len": 0})[0]
    assert "normalize" in data.check_args("hf:x/y", {"normalize": "zscore"})[0]


def test_hub_only_args_are_rejected_for_local_files(tmp_path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("text\nhello\n")
    assert data.check_args("hf:x/y", {"config": "small"}) == []
    assert "unknown arg 'config'" in data.check_args(str(path), {"config": "small"})[0]


def test_check_args_reports_a_bad_spec() -> None:
    assert "unknown scheme" in data.check_args("foo:bar", {})[0]


def test_load_dataset_raises_with_all_problems() -> None:
    with pytest.raises(ValueError, match="unknown arg 'bogus'"):
        data.load_dataset("sklearn:digits", {"bogus": 1}, seed=0)
    with pytest.raises(ValueError, match="unknown scheme"):
        data.load_dataset("nope:x", {}, seed=0)


def test_every_loader_declares_its_args() -> None:
    assert set(data.allowed_args("sklearn:digits")) == {"val_fraction", "test_fraction"}
    assert {"seq_len", "max_bytes"} <= set(data.allowed_args("builtin:text"))
    assert {"config", "image_column", "label_column", "text_column", "tokenizer", "image_size"} <= set(
        data.allowed_args("hf:x/y")
    )


def test_task_info_validates_and_derives_the_metric() -> None:
    assert data.TaskInfo(kind="classification", num_classes=3).metric_name == "accuracy"
    assert data.TaskInfo(kind="lm", vocab_size=10, seq_len=4).metric_name == "perplexity"
    with pytest.raises(ValueError):
        data.TaskInfo(kind="regression")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        data.TaskInfo(kind="lm", vocab_size=10)
