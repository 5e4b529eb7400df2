"""The byte tokenizer, packing, and the builtin:text corpus."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.data import ByteTokenizer, load_dataset
from bench.data.corpus import with_separators
from bench.data.packing import TokenBlocks, TokenStream, split_streams

SMALL = {"max_bytes": 100_000, "seq_len": 32}


@pytest.mark.parametrize("text", ["", "plain ascii", "Grüße, naïve café — ½ ∑ 日本語 🙂\n\ttabs", "\x00\x7f"])
def test_byte_tokenizer_round_trips(text: str) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids)
    assert len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.encode_array(text).tolist() == ids


def test_byte_tokenizer_vocabulary_and_separator() -> None:
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.eos_id, len(tok)) == (257, 256, 257)
    assert tok.decode(tok.encode("a") + [tok.eos_id] + tok.encode("b")) == "ab"
    assert tok.decode([0xE6]) == "\ufffd"  # a cut multi-byte character does not raise
    with pytest.raises(ValueError):
        tok.decode([300])


def test_documents_are_separated_and_cut_into_blocks() -> None:
    stream = TokenStream([with_separators([[1, 2, 3], [4, 5], [6]], eos_id=9, dtype=np.dtype("<u2"))])
    # stream 1 2 3 9 4 5 9 6 9 → two blocks of 4, the tail (9) dropped
    blocks = TokenBlocks(stream, seq_len=3)
    assert [blocks.block(i).tolist() for i in range(len(blocks))] == [[1, 2, 3, 9], [4, 5, 9, 6]]
    assert len(TokenBlocks(TokenStream([with_separators([], 9, np.dtype("<u2"))]), seq_len=3)) == 0


def test_token_blocks_target_is_input_shifted_by_one() -> None:
    ds = TokenBlocks(TokenStream([np.arange(20)]), seq_len=9)
    x, y = ds[1]
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (9,)
    assert x.tolist() == list(range(10, 19)) and y.tolist() == list(range(11, 20))


def test_a_stream_in_parts_reads_like_one_array() -> None:
    whole = np.arange(1000, dtype=np.int64)
    cuts = [0, 3, 4, 250, 251, 999, 1000]
    parts = TokenStream([whole[a:b] for a, b in zip(cuts, cuts[1:], strict=False)])
    for start, length in ((0, 10), (2, 3), (3, 1), (240, 20), (990, 10), (0, 1000)):
        assert parts.read(start, length).tolist() == whole[start : start + length].tolist()
    with pytest.raises(IndexError):
        parts.read(995, 10)


def test_split_streams_keeps_whole_blocks() -> None:
    stream = TokenStream([np.arange(100 * 5)])
    train, val, test = split_streams(stream, None, None, 4, 0.1, 0.2, seed=0)
    assert (len(train), len(val), len(test)) == (70, 10, 20)
    rows = {tuple(ds.block(i).tolist()) for ds in (train, val, test) for i in range(len(ds))}
    assert rows == {tuple(r) for r in np.arange(500).reshape(100, 5).tolist()}


@pytest.fixture(scope="module")
def corpus():
    return load_dataset("builtin:text", SMALL, seed=0)


def test_builtin_text_task_and_items(corpus) -> None:
    task = corpus.task
    assert (task.kind, task.vocab_size, task.seq_len, task.metric_name, task.eos_token_id) == (
        "lm",
        257,
        32,
        "perplexity",
        256,
    )
    x, y = corpus.train[0]
    assert x.shape == y.shape == (32,) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[1:], y[:-1])
    assert corpus.meta["bytes"] == 100_000 and corpus.meta["files"] >= 1
    n_blocks = sum(corpus.sizes().values())
    assert n_blocks == (100_000 + corpus.meta["files"]) // 33
    assert abs(corpus.sizes()["val"] - round(n_blocks * 0.05)) == 0


def test_builtin_text_is_python_source(corpus) -> None:
    text = ByteTokenizer().decode(torch.cat([corpus.train[i][0] for i in range(50)]).tolist())
    assert "def " in text or "import " in text or '"""' in text


def test_builtin_text_is_deterministic(corpus) -> None:
    again = load_dataset("builtin:text", SMALL, seed=0)
    other_seed = load_dataset("builtin:text", SMALL, seed=1)
    assert corpus.fingerprint == again.fingerprint == other_seed.fingerprint
    assert len(corpus.fingerprint) == 64
    assert np.array_equal(corpus.val.indices, again.val.indices) and corpus.val.stream.read(0, 99).tolist() == \
        other_seed.val.stream.read(0, 99).tolist()  # one stream, held-out blocks by seed
    assert not np.array_equal(corpus.val.indices, other_seed.val.indices)


def test_fingerprint_follows_the_corpus(corpus) -> None:
    bigger = load_dataset("builtin:text", {**SMALL, "max_bytes": 120_000}, seed=0)
    assert bigger.fingerprint != corpus.fingerprint
    # seq_len changes the packing, not the corpus
    assert load_dataset("builtin:text", {**SMALL, "seq_len": 16}, seed=0).fingerprint == corpus.fingerprint


def test_too_small_corpus_is_an_error() -> None:
    with pytest.raises(ValueError, match="raise max_bytes"):
        load_dataset("builtin:text", {"max_bytes": 50, "seq_len": 64}, seed=0)
