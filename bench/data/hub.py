"""``hf:<dataset>`` and local data files, through the `datasets` library.

Both sources end up as a mapping of split name → `datasets.Dataset`; what follows is shared:

1. Splits: the source's own ``train`` / ``validation`` (or valid, val, dev) / ``test`` splits are
   used when present; a missing held-out split is carved out of train by the seed (stratified by
   label for images, whole packed blocks for text). A test split whose labels are all negative
   (hidden, as on leaderboard datasets) counts as missing.
2. Kind: a table with an image column (``image``, ``img``, ``pixel_values`` or any column with
   the `datasets.Image` feature) is an image-classification task; otherwise a table with a text
   column (``text``) is a language-modelling corpus.
3. Images are decoded and normalized per item (`bench.data.images`); text is tokenized (bytes by
   default, or a transformers tokenizer) and packed like ``builtin:text``.

Nothing here reaches the network unless the spec names a hub dataset or tokenizer; local files
and local dataset directories load offline.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import socket
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from bench.data.argcheck import int_problems, str_problems
from bench.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageColumnDataset,
    ImageTransform,
    channel_stats,
    infer_channels,
)
from bench.data.packing import TokenBlocks, pack_documents, split_blocks
from bench.data.splits import fraction_problems, stratified_split
from bench.data.task import DataBundle, TaskInfo
from bench.data.tokenizer import ByteTokenizer
from bench.problems import shown

#: File suffix → the `datasets` packaged builder that reads it.
LOCAL_BUILDERS: dict[str, str] = {
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
}

IMAGE_COLUMNS = ("image", "img", "pixel_values")
LABEL_COLUMNS = ("label", "labels", "fine_label")
VAL_SPLITS = ("validation", "valid", "val", "dev")
NORMALIZE_MODES = ("dataset", "imagenet", "none")

#: Images used to estimate per-channel statistics for ``normalize: dataset`` (evenly spaced over
#: the training split; enough for a stable mean/std, cheap to decode).
STATS_SAMPLE = 512

#: Arguments of a local data file.
FILE_ARGS: dict[str, str] = {
    "cache_dir": "directory for the datasets library's Arrow cache (default: its own)",
    "train_split": "name of the training split (default 'train', or the only split)",
    "val_split": "name of the validation split (default: validation/valid/val/dev if present)",
    "test_split": "name of the test split (default: 'test' if present)",
    "val_fraction": "share of train carved out for validation when there is no such split (default 0.1)",
    "test_fraction": "share of train carved out for test when there is no such split (default 0.1)",
    "max_examples": "use at most this many rows of each split (default: all)",
    "image_column": "column holding images (default: image/img/pixel_values or an Image feature)",
    "label_column": "column holding class labels (default: label/labels/fine_label or a ClassLabel)",
    "num_classes": "number of classes (default: from the ClassLabel feature or the largest label + 1)",
    "image_size": "resize images to image_size × image_size (default: keep the first image's size)",
    "normalize": "per-channel normalization: dataset (train statistics, default), imagenet or none",
    "text_column": "column holding text for language modelling (default 'text')",
    "tokenizer": "'byte' (default) or a transformers tokenizer name or local directory",
    "seq_len": "tokens per language-modelling example (default 64)",
    "max_bytes": "cap on the UTF-8 bytes of text read from each split (default: all)",
}
#: Arguments that only mean something for a hub dataset, not for a local file.
HUB_ONLY_ARGS: dict[str, str] = {
    "config": "dataset configuration name (the second argument of datasets.load_dataset)",
    "revision": "dataset git revision on the hub, for reproducible runs",
}
#: Arguments of ``hf:<dataset>``.
ALLOWED_ARGS: dict[str, str] = {**FILE_ARGS, **HUB_ONLY_ARGS}

DEFAULTS: dict[str, Any] = {
    "val_fraction": 0.1,
    "test_fraction": 0.1,
    "normalize": "dataset",
    "text_column": "text",
    "tokenizer": "byte",
    "seq_len": 64,
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


# --------------------------------------------------------------------------------------------
# Cheap checks


def local_builder(spec: str) -> str | None:
    """The `datasets` builder for a local file spec (by suffix), or None if it is not one."""
    return LOCAL_BUILDERS.get(Path(spec).suffix.lower())


def check_local(path: str) -> str | None:
    """Problem with a local data file spec, or None."""
    if not Path(path).expanduser().is_file():
        return f"local data file not found: {path}"
    return None


def check_name(name: str) -> str | None:
    """Problem with the part after ``hf:``, or None. A hub id is not looked up (that needs the
    network); an existing local directory is accepted, a missing local-looking path is not."""
    if not name:
        return "empty dataset name after 'hf:'"
    if Path(name).expanduser().exists():
        return None
    if name.startswith(("/", "./", "../", "~")):
        return f"local dataset directory not found: {name}"
    if not _HUB_ID.match(name):
        return f"{shown(name)} is neither a hub dataset id (owner/name) nor an existing local directory"
    return None


def validate_args(args: dict[str, Any]) -> list[str]:
    """Problems with argument values (names are checked by the registry)."""
    opts = {**DEFAULTS, **args}
    problems = fraction_problems(opts["val_fraction"], opts["test_fraction"])
    problems += int_problems("seq_len", opts["seq_len"])
    for name in ("max_examples", "image_size", "num_classes", "max_bytes"):
        problems += int_problems(name, opts.get(name), optional=True)
    for name in (
        "cache_dir",
        "train_split",
        "val_split",
        "test_split",
        "image_column",
        "label_column",
        "text_column",
        "tokenizer",
        "config",
        "revision",
    ):
        problems += str_problems(name, opts.get(name))
    if opts["normalize"] not in NORMALIZE_MODES:
        problems.append(f"normalize must be one of {', '.join(NORMALIZE_MODES)}, got {shown(opts['normalize'])}")
    return problems


# --------------------------------------------------------------------------------------------
# Can the hub names of a workload be fetched from this machine? (checked before a run starts)

#: Files of a tokenizer repository; any one of them in the local cache means it was downloaded.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def hub_offline() -> bool:
    """Whether the Hugging Face libraries are in offline mode (``HF_HUB_OFFLINE`` or
    ``HF_DATASETS_OFFLINE`` set to a true value, as both libraries read them)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_DATASETS_OFFLINE", "").upper() in {
        "1", "ON", "YES", "TRUE"}


@functools.cache
def hub_reachable(timeout_s: float = 3.0) -> bool:
    """One TCP connection to the hub endpoint (``HF_ENDPOINT``), so that a machine without network
    is told at validation rather than hanging in the first trial's download."""
    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname or "", url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout_s).close()
    except OSError:
        return False
    return True


def _dataset_cached(name: str, args: dict[str, Any]) -> bool:
    """``datasets``' own offline lookup: the builder of a dataset it prepared before (the call
    reads only the local cache when offline mode is on)."""
    import datasets
    from datasets.utils import logging as ds_logging

    level = ds_logging.get_verbosity()
    ds_logging.set_verbosity_error()  # "Using the latest cached version ..." is not news here
    try:
        datasets.load_dataset_builder(name, args.get("config"), revision=args.get("revision"),
                                      cache_dir=args.get("cache_dir"))
    except Exception:  # noqa: BLE001 - ConnectionError, FileNotFoundError, ValueError (config not cached)
        return False
    finally:
        ds_logging.set_verbosity(level)
    return True


def _tokenizer_cached(name: str) -> bool:
    """huggingface_hub's own cache lookup for any of a tokenizer repository's files."""
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(name, f), str) for f in _TOKENIZER_FILES)


def availability_problems(spec: str, args: dict[str, Any]) -> list[str]:
    """Hub names of a workload (an ``hf:`` dataset id, a ``tokenizer`` name) that this machine
    cannot fetch: in offline mode, those missing from the local cache; otherwise, every uncached
    one when the hub is unreachable. Local files and directories always pass."""
    wanted: list[tuple[str, str, Any]] = []  # (what, name, cached?)
    name = spec[3:] if spec.startswith("hf:") else None
    if name and not Path(name).expanduser().exists():
        wanted.append(("dataset", spec, lambda: _dataset_cached(name, args)))
    tokenizer = args.get("tokenizer")
    if isinstance(tokenizer, str) and tokenizer != "byte" and not Path(tokenizer).expanduser().exists():
        wanted.append(("tokenizer", tokenizer, lambda: _tokenizer_cached(tokenizer)))
    if not wanted:
        return []
    offline = hub_offline()
    if not offline and hub_reachable():
        return []
    problems = []
    for what, label, cached in wanted:
        if offline and cached():
            continue
        why = ("HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set and it is not in the local cache" if offline else
               "the Hugging Face Hub is not reachable from this machine (if it is in the local cache, set "
               "HF_HUB_OFFLINE=1 to use the cached copy)")
        problems.append(f"{what} {shown(label)} cannot be fetched offline: {why}; download it once on a "
                        "connected machine, or name a local copy")
    return problems


# --------------------------------------------------------------------------------------------
# Loading the raw splits


def _as_split_dict(loaded: Any) -> dict[str, Any]:
    import datasets

    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    return dict(loaded)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_local(path: str, args: dict[str, Any], seed: int) -> DataBundle:
    """A local ``.parquet/.arrow/.csv/.json/.jsonl`` file (one split: held-out splits are carved)."""
    import datasets

    spec = path
    problem = check_local(path) or "; ".join(validate_args(args))
    if problem:
        raise ValueError(f"dataset {spec!r}: {problem}")
    file = Path(path).expanduser()
    builder = local_builder(path)
    loaded = datasets.load_dataset(builder, data_files=str(file), cache_dir=args.get("cache_dir"))
    meta = {"source": str(file), "builder": builder}
    return _bundle(spec, _as_split_dict(loaded), args, seed, _file_sha256(file), meta)


def load(name: str, args: dict[str, Any], seed: int) -> DataBundle:
    """``hf:<name>``: a hub dataset id, a local dataset directory (data files, loaded like a hub
    repository), or a directory written by ``save_to_disk``."""
    import datasets

    spec = f"hf:{name}"
    problem = check_name(name) or "; ".join(validate_args(args))
    if problem:
        raise ValueError(f"dataset {spec!r}: {problem}")
    local = Path(name).expanduser()
    if local.is_dir() and any((local / f).is_file() for f in ("dataset_dict.json", "state.json")):
        loaded = datasets.load_from_disk(str(local))
    else:
        loaded = datasets.load_dataset(
            str(local) if local.exists() else name,
            args.get("config"),
            revision=args.get("revision"),
            cache_dir=args.get("cache_dir"),
        )
    splits = _as_split_dict(loaded)
    # The library fingerprints every split from its source and processing history: a cheap,
    # stable identity for data too large to hash here.
    ident = {
        "name": name,
        "config": args.get("config"),
        "revision": args.get("revision"),
        "splits": {k: getattr(v, "_fingerprint", None) for k, v in sorted(splits.items())},
    }
    fingerprint = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
    meta = {"source": name, "config": args.get("config"), "revision": args.get("revision")}
    return _bundle(spec, splits, args, seed, fingerprint, meta)


# --------------------------------------------------------------------------------------------
# Shared: splits, kind, and the two kinds of task


def _pick_splits(spec: str, splits: Mapping[str, Any], args: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(train, val or None, test or None) from the source's own splits."""

    def named(key: str) -> Any:
        name = args[key]
        if name not in splits:
            raise ValueError(f"dataset {spec!r}: {key} {name!r} not found; splits: {', '.join(splits)}")
        return splits[name]

    if "train_split" in args:
        train = named("train_split")
    elif "train" in splits:
        train = splits["train"]
    elif len(splits) == 1:
        train = next(iter(splits.values()))
    else:
        raise ValueError(f"dataset {spec!r}: no 'train' split; set train_split to one of {', '.join(splits)}")
    if "val_split" in args:
        val = named("val_split")
    else:
        val = next((splits[s] for s in VAL_SPLITS if s in splits), None)
    test = named("test_split") if "test_split" in args else splits.get("test")
    return train, val, test


def _cap(ds: Any, max_examples: int | None) -> Any:
    if ds is None or max_examples is None or len(ds) <= max_examples:
        return ds
    return ds.select(range(max_examples))


def _column(spec: str, ds: Any, args: Mapping[str, Any], key: str, names: Sequence[str], feature: str) -> str | None:
    """The column a dataset's ``key`` argument names (checked to exist), else the first of the usual
    ``names`` present, else the first column whose feature is of type ``datasets.<feature>``."""
    import datasets

    if key in args:
        name = args[key]
        if name not in ds.column_names:
            raise ValueError(f"dataset {spec!r}: {key} {name!r} not found; columns: {', '.join(ds.column_names)}")
        return name
    for name in names:
        if name in ds.column_names:
            return name
    kind = getattr(datasets, feature)
    return next((k for k, f in ds.features.items() if isinstance(f, kind)), None)


def _find_image_column(spec: str, ds: Any, args: dict[str, Any]) -> str | None:
    return _column(spec, ds, args, "image_column", IMAGE_COLUMNS, "Image")


def _bundle(
    spec: str,
    splits: Mapping[str, Any],
    args: dict[str, Any],
    seed: int,
    fingerprint: str,
    meta: dict[str, Any],
) -> DataBundle:
    opts = {**DEFAULTS, **args}
    train, val, test = (_cap(s, opts.get("max_examples")) for s in _pick_splits(spec, splits, args))
    image_column = _find_image_column(spec, train, args)
    meta = {**meta, "available_splits": list(splits)}
    if image_column is not None:
        return _image_bundle(spec, train, val, test, image_column, opts, seed, fingerprint, meta)
    if opts["text_column"] in train.column_names:
        return _text_bundle(spec, train, val, test, opts, seed, fingerprint, meta)
    raise ValueError(
        f"dataset {spec!r}: found neither an image column ({'/'.join(IMAGE_COLUMNS)}) nor a text column "
        f"({opts['text_column']!r}); columns: {', '.join(train.column_names)} — set image_column or text_column"
    )


# -- images -----------------------------------------------------------------------------------


def _label_column(spec: str, ds: Any, opts: dict[str, Any]) -> str:
    name = _column(spec, ds, opts, "label_column", LABEL_COLUMNS, "ClassLabel")
    if name is not None:
        return name
    raise ValueError(
        f"dataset {spec!r}: no label column ({'/'.join(LABEL_COLUMNS)} or a ClassLabel); "
        f"columns: {', '.join(ds.column_names)} — set label_column"
    )


def _encode_labels(
    spec: str, parts: list[Any], column: str, num_classes: int | None
) -> tuple[list[np.ndarray | None], int, list[str] | None]:
    """Integer labels for each split, the class count, and class names when known.

    String labels are numbered in sorted order over all splits, so the numbering does not depend
    on which split a class first appears in.
    """
    import datasets

    raw = [None if p is None else list(p[column]) for p in parts]
    feature = parts[0].features[column]
    names: list[str] | None = None
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
        labels = [None if r is None else np.asarray(r, dtype=np.int64) for r in raw]
        count = len(names)
    elif all(isinstance(v, str) for r in raw if r is not None for v in r):
        names = sorted({v for r in raw if r is not None for v in r})
        index = {n: i for i, n in enumerate(names)}
        labels = [None if r is None else np.asarray([index[v] for v in r], dtype=np.int64) for r in raw]
        count = len(names)
    else:
        try:
            labels = [None if r is None else np.asarray(r, dtype=np.int64) for r in raw]
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"dataset {spec!r}: label column {column!r} is neither integer nor string: {e}"
            ) from e
        count = int(max(int(lab.max()) for lab in labels if lab is not None and len(lab)) + 1)
    if num_classes is not None:
        if num_classes < count:
            raise ValueError(f"dataset {spec!r}: num_classes={num_classes} but labels go up to {count - 1}")
        count = num_classes
    return labels, count, names


def _image_bundle(
    spec: str,
    train: Any,
    val: Any,
    test: Any,
    image_column: str,
    opts: dict[str, Any],
    seed: int,
    fingerprint: str,
    meta: dict[str, Any],
) -> DataBundle:
    label_column = _label_column(spec, train, opts)
    (train_y, val_y, test_y), num_classes, class_names = _encode_labels(
        spec, [train, val, test], label_column, opts.get("num_classes")
    )
    if test_y is not None and len(test_y) and (test_y < 0).all():
        test, test_y = None, None  # hidden test labels: evaluate on a split carved from train
        meta["hidden_test_labels"] = True

    # Sources: (table, labels, row indices). Missing held-out splits come out of train.
    train_idx = np.arange(len(train))
    val_src = None if val is None else (val, val_y, np.arange(len(val)))
    test_src = None if test is None else (test, test_y, np.arange(len(test)))
    if val is None or test is None:
        train_idx, val_idx, test_idx = stratified_split(
            train_y,
            float(opts["val_fraction"]) if val is None else 0.0,
            float(opts["test_fraction"]) if test is None else 0.0,
            seed,
        )
        if val_src is None:
            val_src = (train, train_y[val_idx], val_idx)
        if test_src is None:
            test_src = (train, train_y[test_idx], test_idx)
    if len(train_idx) == 0:
        raise ValueError(f"dataset {spec!r}: no training examples left")

    first = train[int(train_idx[0])][image_column]
    transform = ImageTransform(channels=infer_channels(first), size=opts.get("image_size"))
    if opts["normalize"] == "dataset":
        sample = np.unique(
            np.linspace(0, len(train_idx) - 1, min(STATS_SAMPLE, len(train_idx))).astype(np.int64)
        )
        transform.mean, transform.std = channel_stats(
            transform, [train[int(train_idx[i])][image_column] for i in sample]
        )
    elif opts["normalize"] == "imagenet":
        if transform.channels != 3:
            raise ValueError(f"dataset {spec!r}: normalize 'imagenet' needs RGB images, these have 1 channel")
        transform.mean, transform.std = IMAGENET_MEAN, IMAGENET_STD
    shape = tuple(transform(first).shape)

    def make(table: Any, labels: np.ndarray, idx: np.ndarray) -> ImageColumnDataset:
        return ImageColumnDataset(table, image_column, labels, idx, transform)

    task = TaskInfo(kind="classification", num_classes=num_classes, input_shape=shape)  # type: ignore[arg-type]
    meta.update(
        image_column=image_column,
        label_column=label_column,
        class_names=class_names,
        normalize_mean=transform.mean,
        normalize_std=transform.std,
    )
    return DataBundle(
        task, make(train, train_y[train_idx], train_idx), make(*val_src), make(*test_src), fingerprint, meta
    )


# -- text -------------------------------------------------------------------------------------


class _HubTokenizer:
    """A transformers tokenizer behind the two things packing needs: ids and a separator id."""

    def __init__(self, name: str) -> None:
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(name)
        self.vocab_size = len(self.tok)
        eos = self.tok.eos_token_id if self.tok.eos_token_id is not None else self.tok.sep_token_id
        if eos is None:
            raise ValueError(f"tokenizer {name!r} has neither an eos nor a sep token to separate documents")
        self.eos_id = int(eos)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # verbose=False: documents longer than the model's max length are fine, they get packed.
        return self.tok(texts, add_special_tokens=False, verbose=False)["input_ids"]


def _texts(ds: Any, column: str, max_bytes: int | None, batch_size: int = 1000) -> Iterator[list[str]]:
    """Batches of non-empty texts, stopping once ``max_bytes`` UTF-8 bytes have been yielded."""
    used = 0
    for batch in ds.iter(batch_size=batch_size):
        texts = [t for t in batch[column] if t]
        if max_bytes is not None:
            kept = []
            for t in texts:
                if used >= max_bytes:
                    break
                kept.append(t)
                used += len(t.encode("utf-8"))
            texts = kept
        if texts:
            yield texts
        if max_bytes is not None and used >= max_bytes:
            return


def _pack_split(ds: Any, tokenizer: Any, opts: dict[str, Any]) -> np.ndarray:
    docs: list[Any] = []
    for texts in _texts(ds, opts["text_column"], opts.get("max_bytes")):
        if isinstance(tokenizer, ByteTokenizer):
            docs.extend(tokenizer.encode_array(t) for t in texts)
        else:
            docs.extend(tokenizer.encode_batch(texts))
    return pack_documents(docs, tokenizer.eos_id, int(opts["seq_len"]))


def _text_bundle(
    spec: str,
    train: Any,
    val: Any,
    test: Any,
    opts: dict[str, Any],
    seed: int,
    fingerprint: str,
    meta: dict[str, Any],
) -> DataBundle:
    tokenizer: Any = ByteTokenizer() if opts["tokenizer"] == "byte" else _HubTokenizer(opts["tokenizer"])
    train_blocks = _pack_split(train, tokenizer, opts)
    val_set = None if val is None else TokenBlocks(_pack_split(val, tokenizer, opts))
    test_set = None if test is None else TokenBlocks(_pack_split(test, tokenizer, opts))
    if val_set is None or test_set is None:
        train_set, carved_val, carved_test = split_blocks(
            train_blocks,
            float(opts["val_fraction"]) if val_set is None else 0.0,
            float(opts["test_fraction"]) if test_set is None else 0.0,
            seed,
        )
        # Explicit None tests: an empty Dataset is falsy, so `or` would hide a split.
        val_set = carved_val if val_set is None else val_set
        test_set = carved_test if test_set is None else test_set
    else:
        train_set = TokenBlocks(train_blocks)
    if len(train_set) == 0 or len(val_set) == 0 or len(test_set) == 0:
        raise ValueError(
            f"dataset {spec!r}: too little text for seq_len={opts['seq_len']} "
            f"(blocks: train {len(train_set)}, val {len(val_set)}, test {len(test_set)})"
        )
    task = TaskInfo(
        kind="lm",
        vocab_size=tokenizer.vocab_size,
        seq_len=int(opts["seq_len"]),
        eos_token_id=tokenizer.eos_id,
    )
    meta.update(text_column=opts["text_column"], tokenizer=opts["tokenizer"])
    return DataBundle(task, train_set, val_set, test_set, fingerprint, meta)
