"""Datasets for specbench trials, named by spec strings and loaded through one registry.

    from bench.data import load_dataset
    bundle = load_dataset("sklearn:digits", {}, seed=0)
    bundle.task            # TaskInfo(kind="classification", num_classes=10, input_shape=(1, 8, 8), ...)
    x, y = bundle.train[0]  # float 1×8×8 image, long label

Specs: ``sklearn:digits``, ``builtin:text``, ``hf:<dataset>``, or a local
``.parquet/.arrow/.csv/.json/.jsonl`` file. See `bench.data.registry`; text corpora are
tokenized once into a shared token cache (`bench.data.cache`) when a trial has one.
"""

from bench.data.registry import allowed_args, check_args, check_spec, load_dataset, prepare_tokens
from bench.data.task import DataBundle, TaskInfo
from bench.data.tokenizer import ByteTokenizer

__all__ = [
    "ByteTokenizer",
    "DataBundle",
    "TaskInfo",
    "allowed_args",
    "check_args",
    "check_spec",
    "load_dataset",
    "prepare_tokens",
]
