"""What a dataset asks of a model, and the three splits that carry it.

`TaskInfo` is the only thing a model builder learns about the data: the model registry sizes
input and output layers from it (``num_classes`` and ``input_shape`` for images, ``vocab_size``
and ``seq_len`` for language models), and the workload (`bench.workload`) reports the metric its
``metric_name`` names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from torch.utils.data import Dataset

TaskKind = Literal["classification", "lm"]

#: The metric each kind of task reports (accuracy for classifiers, perplexity for LMs).
DEFAULT_METRIC: dict[str, str] = {"classification": "accuracy", "lm": "perplexity"}


@dataclass(frozen=True)
class TaskInfo:
    """The shape of a learning task.

    Attributes:
        kind: ``"classification"`` (inputs are float C×H×W images, targets a long class index) or
            ``"lm"`` (inputs are ``seq_len`` long token ids, targets the next token at each
            position).
        num_classes: number of classes (classification only).
        input_shape: ``(C, H, W)`` of one image (classification only; None for LMs).
        vocab_size: number of token ids, the embedding and output size of an LM.
        seq_len: tokens per training example (LM only).
        metric_name: ``"accuracy"`` or ``"perplexity"``; derived from ``kind`` when left empty.
        eos_token_id: the id that separates documents in packed LM blocks (LM only), so that
            model builders can point a config's bos/eos ids at a token that exists.
    """

    kind: TaskKind
    num_classes: int | None = None
    input_shape: tuple[int, int, int] | None = None
    vocab_size: int | None = None
    seq_len: int | None = None
    metric_name: str = ""
    eos_token_id: int | None = None

    def __post_init__(self) -> None:
        # Fail where the task is made, not deep inside a model builder.
        if self.kind not in DEFAULT_METRIC:
            raise ValueError(f"TaskInfo.kind must be 'classification' or 'lm', got {self.kind!r}")
        if not self.metric_name:
            object.__setattr__(self, "metric_name", DEFAULT_METRIC[self.kind])
        if self.kind == "classification":
            if self.num_classes is None or self.num_classes < 1:
                raise ValueError(f"a classification task needs num_classes >= 1, got {self.num_classes!r}")
            if self.input_shape is not None:
                object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        else:
            if self.vocab_size is None or self.vocab_size < 1:
                raise ValueError(f"an lm task needs vocab_size >= 1, got {self.vocab_size!r}")
            if self.seq_len is None or self.seq_len < 1:
                raise ValueError(f"an lm task needs seq_len >= 1, got {self.seq_len!r}")


@dataclass
class DataBundle:
    """A task with its train, validation and test splits.

    Each split is a `torch.utils.data.Dataset` whose items are ``(input, target)`` tensors.

    Attributes:
        task: the task the splits belong to.
        train, val, test: the splits.
        fingerprint: a hex digest identifying the data that was loaded (for the builtin corpora a
            sha256 of the content), so that results can say which data a run saw; None when the
            loader cannot tell.
        meta: small facts about the data worth recording (file counts, split sizes, columns).
        cache_key: the token-cache entry the splits are memory-mapped from (`bench.data.cache`;
            recorded in ``runs.data_cache_key``), None when the data was loaded in memory.
    """

    task: TaskInfo
    train: Dataset
    val: Dataset
    test: Dataset
    fingerprint: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    cache_key: str | None = None

    def sizes(self) -> dict[str, int]:
        """Number of examples in each split."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}  # type: ignore[arg-type]
