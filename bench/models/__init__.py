"""Models for specbench trials, named by spec strings and built through one registry.

    from bench.models import build_model
    model = build_model("builtin:cnn", bundle.task, {})
    logits = model(images)  # B×num_classes (LMs: B×T×vocab)

Specs: ``builtin:cnn``, ``builtin:transformer``, ``timm:<name>``, ``hf:<name-or-config>``.
See `bench.models.registry`.
"""

from bench.models.registry import allowed_args, build_model, check_args, check_spec

__all__ = ["allowed_args", "build_model", "check_args", "check_spec"]
