"""The token cache: the same examples as in-memory tokenization, one build however many processes
ask at once, broken or foreign entries rebuilt, shards that follow the byte cap; and background
image loaders that hand the sampler's batches over in its order."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.batching import GlobalBatchSampler, fetch
from bench.data import load_dataset
from bench.data.cache import SAMPLE_BYTES, TokenCache, cache_key
from bench.data.corpus import ListRows, plan_shards

WORDS = "the quick brown fox jumps over a lazy dog naïve café déjà vu".split()


def _corpus(path: Path, docs: int, seed: int = 0, words: int = 60) -> Path:
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(docs):
        text = "" if i % 17 == 5 else " ".join(rng.choice(WORDS, size=int(rng.integers(1, words))))
        lines.append(json.dumps({"text": text}))
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _tokenizer(root: Path) -> Path:
    """A word-level transformers tokenizer saved locally (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[EOS]": 1, **{w: i + 2 for i, w in enumerate(sorted(set(WORDS)))}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", eos_token="[EOS]").save_pretrained(str(root))
    return root


def _items(bundle) -> list[list[int]]:
    return [ds.block(i).tolist() for ds in (bundle.train, bundle.val, bundle.test) for i in range(len(ds))]


def _builds(cache: TokenCache) -> list[dict]:
    log = cache.root / "builds.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return _corpus(tmp_path_factory.mktemp("corpus") / "c.jsonl", 1500)


# --------------------------------------------------------------------------- same examples
@pytest.mark.parametrize("case", ["builtin", "bytes_in_parallel_shards", "transformers_tokenizer"])
def test_the_cache_gives_the_examples_of_in_memory_tokenization(case, corpus, tmp_path):
    if case == "builtin":
        spec, args = "builtin:text", {"max_bytes": 150_000, "seq_len": 32}
        cache = TokenCache(tmp_path / "cache")
    elif case == "bytes_in_parallel_shards":  # several shards, two spawn processes
        spec, args = str(corpus), {"seq_len": 24, "max_bytes": 60_000}
        cache = TokenCache(tmp_path / "cache", workers=2, shard_bytes=7_000)
    else:
        spec, args = str(corpus), {"seq_len": 8, "tokenizer": str(_tokenizer(tmp_path / "tok")),
                                   "val_fraction": 0.2}
        cache = TokenCache(tmp_path / "cache", workers=1, shard_bytes=20_000)
    for seed in (0, 3):  # paired seeds: one entry, each seed its own held-out blocks
        memory = load_dataset(spec, args, seed)
        cached = load_dataset(spec, args, seed, cache=cache)
        assert memory.cache_key is None and cached.cache_key == cache.built[0]
        assert cached.sizes() == memory.sizes() and cached.task == memory.task
        assert cached.fingerprint == memory.fingerprint
        assert _items(cached) == _items(memory)
        assert isinstance(cached.train.stream.parts[0], np.memmap)
    assert len(cache.built) == len(_builds(cache)) == 1
    manifest = json.loads((cache.root / cache.built[0] / "manifest.json").read_text())
    parts = manifest["splits"]["train"]["parts"]
    assert len(parts) == (1 if case == "builtin" else len(plan_shards_of(corpus, args, cache.shard_bytes)))
    assert case == "builtin" or len(parts) > 1


def plan_shards_of(path: Path, args: dict, shard_bytes: int) -> list:
    texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]
    return plan_shards(ListRows(texts), args.get("max_bytes"), shard_bytes)


def test_batches_of_every_step_are_the_same_with_and_without_the_cache(corpus, tmp_path):
    """The global batch of step s is a function of (seed, s) alone, so a run resumed at any step
    reads what an uninterrupted run reads, cached or not."""
    cache = TokenCache(tmp_path / "cache")
    args = {"seq_len": 16}
    for seed in (11, 12):
        memory, cached = load_dataset(str(corpus), args, seed), load_dataset(str(corpus), args, seed, cache=cache)
        n = len(memory.train)
        for rank in (0, 1):
            a, b = (GlobalBatchSampler(n, seed, 8, 2, 2, rank) for _ in range(2))
            for step in (0, 1, 57, n // 32 + 3):  # the last one is in a later epoch
                for micro in (0, 1):
                    x, y = fetch(memory.train, a.indices(step, micro))
                    xc, yc = fetch(cached.train, b.indices(step, micro))
                    assert torch.equal(x, xc) and torch.equal(y, yc)
    assert len(cache.built) == 1


def test_the_key_follows_what_decides_the_tokens(corpus, tmp_path):
    cache = TokenCache(tmp_path / "cache")
    base = {"seq_len": 16}
    key = load_dataset(str(corpus), base, 0, cache=cache).cache_key
    # seq_len and the held-out fractions are views over the stored stream: same entry
    assert load_dataset(str(corpus), {**base, "seq_len": 40, "val_fraction": 0.3}, 1, cache=cache).cache_key == key
    assert load_dataset(str(corpus), {**base, "max_bytes": 10_000}, 0, cache=cache).cache_key != key
    other = _corpus(tmp_path / "other.jsonl", 1500, seed=1)
    assert load_dataset(str(other), base, 0, cache=cache).cache_key != key
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(corpus.read_bytes())  # the same content elsewhere: the same entry
    assert load_dataset(str(copy), base, 0, cache=cache).cache_key == key
    assert len(cache.built) == 3 and cache_key({"a": 1}) != cache_key({"a": 2})


# --------------------------------------------------------------------------- one build
def _load_in_process(spec: str, args: dict, root: str, barrier, queue) -> None:
    cache = TokenCache(root, workers=1, shard_bytes=20_000, log=lambda m: queue.put(("log", m)))
    barrier.wait()  # every process asks at the same moment
    bundle = load_dataset(spec, args, 0, cache=cache)
    ends = [bundle.train.block(i).tolist() for i in (0, len(bundle.train) - 1)]
    queue.put(("done", bundle.cache_key, cache.built, ends))


def test_concurrent_processes_build_an_entry_once_and_never_read_it_half_written(corpus, tmp_path):
    """Three processes ask for one entry at once while this test holds the entry's lock (as a
    builder would): all three must wait, then exactly one builds and the others map its result."""
    from filelock import FileLock

    spec, args = str(corpus), {"seq_len": 32}
    reference = TokenCache(tmp_path / "reference")  # the key and the blocks, built in this process
    want = load_dataset(spec, args, 0, cache=reference)
    key, root = reference.built[0], tmp_path / "cache"
    root.mkdir()
    ctx = mp.get_context("fork")  # as torch's DataLoader workers: no re-import, so the test stays fast
    barrier, queue = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_load_in_process, args=(spec, args, str(root), barrier, queue)) for _ in range(3)]
    messages: list[tuple] = []
    with FileLock(str(root / f"{key}.lock")):
        for p in procs:
            p.start()
        while sum(m[0] == "log" for m in messages) < 3:  # every process found no entry and waits
            messages.append(queue.get(timeout=300))
        assert not (root / key).exists()
    while sum(m[0] == "done" for m in messages) < 3:
        messages.append(queue.get(timeout=300))
    assert all("waiting for another process" in m[1] for m in messages if m[0] == "log")
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    done = [m for m in messages if m[0] == "done"]
    assert {m[1] for m in done} == {key}
    assert sum(len(m[2]) for m in done) == 1  # exactly one process built it
    ends = [want.train.block(i).tolist() for i in (0, len(want.train) - 1)]
    assert all(m[3] == ends for m in done)  # each read the published entry, to its last block
    assert len(_builds(TokenCache(root))) == 1
    assert not list(root.glob(".build-*")) and not list(root.glob(".old-*"))


# --------------------------------------------------------------------------- broken entries
def test_corrupted_incomplete_or_foreign_entries_are_rebuilt_with_a_message(corpus, tmp_path):
    notes: list[str] = []
    cache = TokenCache(tmp_path / "cache", shard_bytes=1 << 30, log=notes.append)
    args = {"seq_len": 16}
    good = _items(load_dataset(str(corpus), args, 0, cache=cache))
    entry = cache.root / cache.built[0]
    part = entry / "train" / "00000.bin"

    def reload(expect: str) -> None:
        notes.clear()
        assert _items(load_dataset(str(corpus), args, 0, cache=cache)) == good
        assert len(notes) == 1 and expect in notes[0] and str(entry) in notes[0], notes

    part.write_bytes(part.read_bytes()[:-2])  # truncated
    reload("corrupted")
    data = bytearray(part.read_bytes())
    data[-1] ^= 0xFF  # overwritten where the sampled digest looks
    part.write_bytes(bytes(data))
    reload("does not match its digest")
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["fields"]["source"]["file"] = "0" * 64  # another corpus's manifest under this key
    (entry / "manifest.json").write_text(json.dumps(manifest))
    reload("foreign")
    (entry / "manifest.json").unlink()
    reload("incomplete")
    assert len(_builds(cache)) == 5

    # A byte changed where only the full digest looks: opening (sampled) misses it, a full check
    # (what `specbench data prepare` runs) finds it.
    assert part.stat().st_size > 4 * SAMPLE_BYTES
    data = bytearray(part.read_bytes())
    data[SAMPLE_BYTES + 10] ^= 0xFF
    part.write_bytes(bytes(data))
    notes.clear()
    load_dataset(str(corpus), args, 0, cache=cache)
    assert notes == []
    cache.full_check = True
    load_dataset(str(corpus), args, 0, cache=cache)
    assert len(notes) == 1 and "does not match its digest" in notes[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions")
def test_a_prepared_cache_is_read_without_write_access(corpus, tmp_path):
    cache = TokenCache(tmp_path / "cache")
    key = load_dataset(str(corpus), {"seq_len": 16}, 0, cache=cache).cache_key
    load_dataset(str(corpus), {"seq_len": 16}, 0, cache=cache)  # the file digest is remembered now
    for path in [cache.root, *cache.root.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        again = TokenCache(tmp_path / "cache")
        assert load_dataset(str(corpus), {"seq_len": 16}, 0, cache=again).cache_key == key
        assert again.built == []
    finally:
        for path in [cache.root, *cache.root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)


# --------------------------------------------------------------------------- shards
def _kept_rows_oracle(texts: list[str], max_bytes: int | None) -> int:
    """Rows read (the in-memory rule before the cache): stop once the bytes kept reach the cap."""
    used, last = 0, 0
    for i, t in enumerate(texts):
        if not t:
            continue
        if max_bytes is not None and used >= max_bytes:
            break
        used += len(t.encode("utf-8"))
        last = i + 1
    return last


def test_shards_cover_the_rows_the_byte_cap_keeps():
    rng = np.random.default_rng(0)
    texts = ["" if rng.random() < 0.1 else "é" * int(rng.integers(1, 300)) for _ in range(500)]
    rows = ListRows(texts)
    for max_bytes in (None, 1, 999, 20_000, 10**9):
        for shard_bytes in (1, 500, 7_777, 10**9):
            shards = plan_shards(rows, max_bytes, shard_bytes)
            covered = [i for a, b in shards for i in range(a, b)]
            kept = _kept_rows_oracle(texts, max_bytes)
            assert covered[: kept] == list(range(kept))
            assert not any(texts[i] for i in covered[kept:])  # anything past the last kept row is empty
    assert plan_shards(ListRows([]), None, 10) == []


# --------------------------------------------------------------------------- images
def _image_folder(root: Path, n: int = 48) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / "train" / f"class_{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((12, 12, 3)) * 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root


def test_background_loaders_hand_over_the_sampler_batches_in_order(tmp_path):
    from bench.data.loader import InputPipeline, StepBatches

    bundle = load_dataset(f"hf:{_image_folder(tmp_path / 'images')}", {"cache_dir": str(tmp_path / "hf")}, 0)
    train = bundle.train
    assert train.decodes_on_access
    cpu = torch.device("cpu")
    for rank in (0, 1):
        sampler = GlobalBatchSampler(len(train), 5, micro_batch=3, grad_accum=2, world_size=2, rank=rank)
        assert list(StepBatches(sampler, 2, 1, 4)) == [sampler.indices(s - 1, m) for s, m in
                                                      ((2, 1), (3, 0), (3, 1), (4, 0), (4, 1))]
        steps = range(1, 10)  # 108 samples: past two epochs of the 36 training images
        inline = InputPipeline(train, sampler, 9, cpu, torch.float32, workers=0)
        background = InputPipeline(train, sampler, 9, cpu, torch.float32, workers=2, prefetch=2)
        assert inline.workers == 0 and InputPipeline(train, sampler, 9, cpu, torch.float32).workers == 2
        for step in steps:
            for micro in (0, 1):
                x, y = inline.batch(step, micro)
                xb, yb = background.batch(step, micro)
                assert torch.equal(x, xb) and torch.equal(y, yb)
                pids = background.worker_pids()
                assert len(pids) == 2 and os.getpid() not in pids
        background.close()
        assert background.worker_pids() == []
        # A resumed trial starts its loaders at the checkpoint's step: the same batches again.
        resumed = InputPipeline(train, sampler, 9, cpu, torch.float32, workers=2)
        for step in (6, 7):
            for micro in (0, 1):
                assert torch.equal(resumed.batch(step, micro)[0], inline.batch(step, micro)[0])
        resumed.close()
