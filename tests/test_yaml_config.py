"""Config files read as YAML 1.2 with bounds: types as written, duplicate keys and runaway
aliases refused, every problem with its line, and no value echoed at length."""

from __future__ import annotations

import math
import time
import tracemalloc

import pytest

from bench.problems import MAX_SHOWN, shown
from bench.yaml_config import MAX_BYTES, YamlProblems, load, loads, parse


@pytest.mark.parametrize(("text", "value"), [
    ("1e-3", 0.001), ("1.0e-3", 0.001), (".5", 0.5), ("-2.5E+2", -250.0), ("1.", 1.0),
    ("017", 17), ("0o17", 15), ("0x1F", 31), ("+3", 3), ("-0", 0),
    ("true", True), ("False", False), ("TRUE", True),
    ("null", None), ("~", None), ("", None),
    # YAML 1.1 would turn these into booleans, ints or dates; YAML 1.2 keeps them strings.
    ("yes", "yes"), ("on", "on"), ("No", "No"), ("1_000", "1_000"), ("1:30", "1:30"),
    ("2024-01-01", "2024-01-01"), ('"0.01"', "0.01"), ("'true'", "true"),
])
def test_plain_scalars_follow_the_yaml_1_2_core_schema(text, value):
    got = loads(f"key: {text}")["key"]
    assert got == value and type(got) is type(value)


def test_special_floats():
    doc = loads("a: .inf\nb: -.Inf\nc: .nan")
    assert doc["a"] == math.inf and doc["b"] == -math.inf and math.isnan(doc["c"])


def test_duplicate_keys_are_reported_with_their_lines_but_leave_a_document():
    doc, problems = parse("lr: 1\nsettings:\n  wd: 0.1\n  wd: 0.2\nlr: 2\n")
    assert doc == {"lr": 2, "settings": {"wd": 0.2}}  # what PyYAML would silently have kept
    assert len(problems) == 2
    (top,) = [p for p in problems if "duplicate key 'lr' in the top level" in p]
    assert top.startswith("line 5") and "first at line 1" in top
    (inner,) = [p for p in problems if "duplicate key 'wd' in settings" in p]
    assert inner.startswith("line 4") and "first at line 3" in inner
    with pytest.raises(YamlProblems):
        loads("a: 1\na: 2")


def test_merge_keys_may_be_overridden():
    assert loads("base: &b {x: 1, y: 2}\nd: {<<: *b, x: 3}")["d"] == {"x": 3, "y": 2}


@pytest.mark.parametrize(("text", "needle"), [
    ("1: x", "key '1' in the top level is not a string"),
    ("a: {true: 1}", "key 'true' in a is not a string"),
    ("a: !!set {x}", "tag '!!set' is not supported"),
    ("a: !!binary aGk=", "tag '!!binary' is not supported"),
    ("a: !!timestamp 2024-01-01", "tag '!!timestamp' is not supported"),
    ("a: !python/object x", "tag '!python/object' is not supported"),
    ("a: !!int abc", "cannot be read"),
    ("a: &x [1, *x]", "a[1] refers to itself through an alias"),
    ("a: [1, 2", "malformed YAML at line"),
    ("a: 1\n---\nb: 2", "malformed YAML"),
    ("a: " + "[" * 70 + "]" * 70, "nested more than 64 levels"),
    ("a: " + "[" * 5000 + "]" * 5000, "malformed YAML"),
])
def test_documents_that_cannot_be_built_are_refused(text, needle):
    with pytest.raises(YamlProblems) as info:
        loads(text)
    assert any(needle in p for p in info.value.problems), info.value.problems


def _laughs(levels: int = 9, width: int = 9) -> str:
    lines = ['l0: &l0 ["' + "ha" * 8 + '"]']
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + f"\noptimizers: [{{name: adamw, grid: {{lr: *l{levels}}}}}]\n"


def test_billion_laughs_is_refused_quickly_in_bounded_memory():
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(YamlProblems) as info:
        loads(_laughs())  # 9^9 ≈ 387M strings once expanded
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert "expands to more than" in info.value.problems[0]
    assert elapsed < 2.0 and peak < 20 * 2**20, (elapsed, peak)
    # A few shared aliases are fine: they are ordinary YAML.
    assert len(loads(_laughs(levels=2, width=3))["l2"]) == 3


def test_files_that_cannot_be_read(tmp_path):
    cases = {
        tmp_path / "missing.yaml": "file not found",
        tmp_path: "is a directory",
    }
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("name: x\nlabel: caf\xe9\n".encode("latin-1"))
    cases[latin1] = "is not UTF-8 text (byte 0xe9 on line 2"
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * (MAX_BYTES + 1))
    cases[big] = "is larger than"
    for path, needle in cases.items():
        with pytest.raises(YamlProblems) as info:
            load(path)
        assert needle in info.value.problems[0], info.value.problems
    bom = tmp_path / "bom.yaml"
    bom.write_bytes("\ufeffname: x\n".encode())
    assert load(bom) == ({"name": "x"}, [])


def test_shown_values_are_clipped():
    assert shown("abc") == "'abc'"
    huge = "x" * 10_000_000
    assert len(shown(huge)) <= MAX_SHOWN and "..." in shown(huge)
    nested = [[["y" * 1000] * 1000] * 1000] * 1000  # shared lists: cheap to build, vast to render
    assert len(shown(nested)) <= MAX_SHOWN
