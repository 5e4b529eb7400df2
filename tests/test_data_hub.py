"""The `datasets` code path (hf:<dir> and local files) on files generated here: images in
Parquet (encoded PNGs, plain arrays, a datasets Image feature) and text in CSV/JSONL/Arrow.
No network: every source is a local file or directory."""

from __future__ import annotations

import io
import json

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from bench.data import ByteTokenizer, load_dataset


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # Belt and braces: local sources never need the hub, and must not try it.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)


def _images(n: int, seed: int, channels: int = 1, size: int = 8) -> tuple[list[np.ndarray], list[int]]:
    rng = np.random.default_rng(seed)
    labels = [i % 3 for i in range(n)]
    shape = (size, size) if channels == 1 else (size, size, channels)
    # Class-dependent brightness so the labels mean something.
    imgs = [np.clip(rng.normal(60 + 60 * y, 20, shape), 0, 255).astype(np.uint8) for y in labels]
    return imgs, labels


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _write_png_parquet(path, n: int = 60, seed: int = 0, labels: list | None = None) -> None:
    imgs, ys = _images(n, seed)
    cells = [{"bytes": _png(a), "path": None} for a in imgs]
    pq.write_table(pa.table({"image": cells, "label": labels if labels is not None else ys}), path)


TEXTS = [
    f"Document {i}: naïve café {'λ' * (i % 5)} — " + "the quick brown fox " * (i % 7 + 1) for i in range(60)
]


def _args(tmp_path, **extra):
    return {"cache_dir": str(tmp_path / "cache"), **extra}


def test_parquet_of_encoded_png_images(tmp_path) -> None:
    path = tmp_path / "digits.parquet"
    _write_png_parquet(path)
    bundle = load_dataset(str(path), _args(tmp_path), seed=0)
    assert (bundle.task.kind, bundle.task.num_classes, bundle.task.input_shape) == (
        "classification",
        3,
        (1, 8, 8),
    )
    assert bundle.sizes() == {"train": 48, "val": 6, "test": 6}
    x, y = bundle.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    xs = torch.stack([bundle.train[i][0] for i in range(len(bundle.train))])
    assert abs(xs.mean().item()) < 0.1 and abs(xs.std().item() - 1) < 0.1  # train-normalized
    assert len(bundle.fingerprint) == 64 and bundle.meta["label_column"] == "label"
    xb, yb = next(iter(DataLoader(bundle.val, batch_size=4)))
    assert xb.shape == (4, 1, 8, 8) and yb.shape == (4,)


def test_split_is_deterministic_from_the_seed(tmp_path) -> None:
    path = tmp_path / "d.parquet"
    _write_png_parquet(path)
    a, b, c = (load_dataset(str(path), _args(tmp_path), seed=s) for s in (0, 0, 1))
    assert np.array_equal(a.test.indices, b.test.indices)
    assert not np.array_equal(a.test.indices, c.test.indices)
    assert torch.equal(a.test[0][0], b.test[0][0])


def test_array_images_string_labels_and_resize(tmp_path) -> None:
    imgs, ys = _images(30, 1, channels=3)
    names = ["cat", "dog", "emu"]
    table = pa.table({"img": [a.tolist() for a in imgs], "labels": [names[y] for y in ys]})
    path = tmp_path / "rgb.parquet"
    pq.write_table(table, path)
    bundle = load_dataset(str(path), _args(tmp_path, image_size=16, normalize="none"), seed=0)
    assert bundle.task.input_shape == (3, 16, 16) and bundle.task.num_classes == 3
    assert bundle.meta["class_names"] == names
    x, _ = bundle.train[0]
    assert x.shape == (3, 16, 16) and 0.0 <= x.min() and x.max() <= 255.0  # int lists: no rescale


def test_datasets_image_feature_and_own_splits(tmp_path) -> None:
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])}
    )
    root = tmp_path / "imgs"
    for split, n, seed in (("train", 45, 0), ("test", 12, 1)):
        imgs, ys = _images(n, seed)
        ds = datasets.Dataset.from_dict(
            {"image": [Image.fromarray(a) for a in imgs], "label": ys}, features=features
        )
        ds.to_parquet(str(root / f"{split}.parquet"))
    bundle = load_dataset(f"hf:{root}", _args(tmp_path, val_fraction=0.2), seed=0)
    assert bundle.sizes() == {"train": 36, "val": 9, "test": 12}  # own test split, val carved from train
    assert bundle.meta["class_names"] == ["a", "b", "c"]
    assert bundle.task.input_shape == (1, 8, 8)


def test_hidden_test_labels_are_replaced_by_a_carved_split(tmp_path) -> None:
    root = tmp_path / "hidden"
    root.mkdir()
    _write_png_parquet(root / "train.parquet", n=60)
    _write_png_parquet(root / "test.parquet", n=10, labels=[-1] * 10)
    bundle = load_dataset(f"hf:{root}", _args(tmp_path), seed=0)
    assert bundle.meta["hidden_test_labels"] and bundle.sizes() == {"train": 48, "val": 6, "test": 6}


def test_save_to_disk_directory_with_all_splits(tmp_path) -> None:
    dd = datasets.DatasetDict(
        {
            name: datasets.Dataset.from_dict({"text": TEXTS[i::3]})
            for i, name in enumerate(["train", "validation", "test"])
        }
    )
    dd.save_to_disk(str(tmp_path / "saved"))
    bundle = load_dataset(f"hf:{tmp_path / 'saved'}", {"seq_len": 16}, seed=0)
    assert bundle.task.kind == "lm" and bundle.task.vocab_size == 257
    assert all(n > 0 for n in bundle.sizes().values())


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_text_files_are_packed_like_builtin_text(tmp_path, suffix: str) -> None:
    path = tmp_path / f"corpus{suffix}"
    if suffix == ".csv":
        datasets.Dataset.from_dict({"id": list(range(len(TEXTS))), "text": TEXTS}).to_csv(
            str(path), index=False
        )
    else:
        path.write_text("\n".join(json.dumps({"text": t}) for t in TEXTS), encoding="utf-8")
    bundle = load_dataset(str(path), _args(tmp_path, seq_len=24), seed=0)
    task = bundle.task
    assert (task.kind, task.vocab_size, task.seq_len, task.eos_token_id) == ("lm", 257, 24, 256)
    x, y = bundle.train[0]
    assert x.shape == y.shape == (24,) and torch.equal(x[1:], y[:-1])
    # Packing: the whole corpus with one separator per document, cut into blocks of 25.
    total = sum(len(t.encode("utf-8")) + 1 for t in TEXTS)
    assert sum(bundle.sizes().values()) == total // 25
    everything = torch.cat([ds.block(i) for ds in (bundle.train, bundle.val, bundle.test) for i in range(len(ds))])
    assert "naïve café" in ByteTokenizer().decode(everything.tolist())


def test_arrow_file_and_caps(tmp_path) -> None:
    datasets.Dataset.from_dict({"body": TEXTS}).save_to_disk(str(tmp_path / "arr"))
    path = tmp_path / "arr" / "data-00000-of-00001.arrow"
    bundle = load_dataset(str(path), _args(tmp_path, text_column="body", seq_len=16, max_examples=30), seed=0)
    total = sum(len(t.encode("utf-8")) + 1 for t in TEXTS[:30])
    assert sum(bundle.sizes().values()) == total // 17


def test_local_transformers_tokenizer(tmp_path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in TEXTS for w in t.split()})
    vocab = {"[UNK]": 0, "[EOS]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", eos_token="[EOS]").save_pretrained(
        str(tmp_path / "tok")
    )
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in TEXTS), encoding="utf-8")
    bundle = load_dataset(str(path), _args(tmp_path, tokenizer=str(tmp_path / "tok"), seq_len=8), seed=0)
    assert bundle.task.vocab_size == len(vocab) and bundle.task.eos_token_id == 1
    x, y = bundle.train[0]
    assert int(x.max()) < len(vocab) and torch.equal(x[1:], y[:-1])


def test_table_without_image_or_text_column_is_explained(tmp_path) -> None:
    path = tmp_path / "tab.csv"
    path.write_text("a,b\n1,2\n3,4\n")
    with pytest.raises(ValueError, match="neither an image column.*columns: a, b"):
        load_dataset(str(path), _args(tmp_path), seed=0)


def test_missing_named_column_or_split_is_explained(tmp_path) -> None:
    path = tmp_path / "d.parquet"
    _write_png_parquet(path, n=30)
    with pytest.raises(ValueError, match="label_column 'target' not found"):
        load_dataset(str(path), _args(tmp_path, label_column="target"), seed=0)
    with pytest.raises(ValueError, match="val_split 'dev' not found"):
        load_dataset(str(path), _args(tmp_path, val_split="dev"), seed=0)
