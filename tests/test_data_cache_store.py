"""A token cache on an object store (``cache_dir: s3://…``, or the default under an s3 storage),
against the real S3-compatible server of `test_object_store`: an entry built on one machine is
uploaded parts first, manifest last, and another machine (an empty staging tree) downloads and
checks it instead of tokenizing again; a corrupted download is rebuilt; `remove` clears the store."""

from __future__ import annotations

import pytest
from test_data_cache import _corpus, _items
from test_object_store import _remote_files, s3  # noqa: F401  (s3: the server fixture)

from bench.data import load_dataset
from bench.data.cache import TokenCache

pytestmark = pytest.mark.integration


def test_an_entry_built_on_one_machine_is_downloaded_not_rebuilt_on_another(s3, tmp_path, monkeypatch):  # noqa: F811
    corpus, args = str(_corpus(tmp_path / "c.jsonl", 400)), {"seq_len": 16}
    uri = s3("cache")
    monkeypatch.setenv("SPECBENCH_STAGING", str(tmp_path / "a"))
    first = TokenCache(uri)
    want = _items(load_dataset(corpus, args, 0, cache=first))
    (key,) = first.built
    assert first.root.is_relative_to(tmp_path / "a")
    stored = _remote_files(uri)
    assert f"{key}/manifest.json" in stored and f"{key}/train/00000.bin" in stored

    notes: list[str] = []
    monkeypatch.setenv("SPECBENCH_STAGING", str(tmp_path / "b"))  # another machine
    second = TokenCache(uri, log=notes.append)
    assert [e["key"] for e in second.entries()] == [key] and second.entries()[0]["where"] == "store"
    assert _items(load_dataset(corpus, args, 0, cache=second)) == want
    assert second.built == [] and notes == []  # downloaded, not tokenized again

    monkeypatch.setenv("SPECBENCH_STAGING", str(tmp_path / "c"))  # a third, whose download is damaged
    third = TokenCache(uri, log=notes.append)
    part = third.root / key / "train" / "00000.bin"
    pull = third.mirror.pull_tree

    def damaged(prefix: str) -> int:
        n = pull(prefix)
        part.write_bytes(part.read_bytes()[:-2])
        return n

    third.mirror.pull_tree = damaged  # type: ignore[method-assign]
    assert _items(load_dataset(corpus, args, 0, cache=third)) == want
    assert third.built == [key] and len(notes) == 1 and "unusable" in notes[0] and "rebuilding" in notes[0]

    assert third.remove() == [key]
    assert not any(f.startswith(key) for f in _remote_files(uri))
