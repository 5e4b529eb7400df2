"""The curvature probe outside training: ``specbench probe CONFIG --trial N --checkpoint DIR``.

Builds the trial's model and data exactly as the trial does (same seeds), loads the weights of a
DeepSpeed checkpoint (ZeRO 0 model states, or ZeRO 1–3 partitions consolidated by DeepSpeed's
own ``get_fp32_state_dict_from_zero_checkpoint``), probes it in one process, and merges the rows
into the trial's ``curvature`` and ``profile`` tables under the checkpoint's step (rows of that
step are replaced, never duplicated). Without a checkpoint it probes the initial weights
(step 0).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from bench.config import TrialSpec
from bench.probes.probe_batch import ProbeBatch
from bench.probes.runner import run_probe
from bench.results import writer
from bench.workload import Workload


def _tag_dir(checkpoint: Path) -> Path:
    """A DeepSpeed tag directory from either the tag itself or its parent (via ``latest``)."""
    latest = checkpoint / "latest"
    if latest.is_file():
        return checkpoint / latest.read_text().strip()
    return checkpoint


def load_model_state(checkpoint: Path) -> tuple[dict[str, torch.Tensor], int]:
    """(state dict, step) of a DeepSpeed checkpoint written by a trial."""
    tag = _tag_dir(checkpoint)
    if not tag.is_dir():
        raise FileNotFoundError(f"no DeepSpeed checkpoint at {checkpoint}")
    match = re.fullmatch(r"step(\d+)", tag.name)
    step = int(match.group(1)) if match else -1
    model_states = sorted(tag.glob("mp_rank_*_model_states.pt"))
    if any(tag.glob("*zero_pp_rank_*optim_states.pt")) or any(tag.glob("zero_pp_rank_*")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(tag.parent), tag=tag.name), step
    if not model_states:
        raise FileNotFoundError(f"{tag} holds no DeepSpeed model states")
    blob = torch.load(model_states[0], map_location="cpu", weights_only=False)
    if step < 0:
        step = int((blob.get("client_state") or blob).get("step", 0) or 0)
    return blob["module"], step


def probe_checkpoint(spec: TrialSpec, storage: str | Path, checkpoint: Path | None) -> dict[str, Any]:
    """Probe a trial's model at a checkpoint (or at initialisation) and merge the rows."""
    workload = Workload.load(spec.workload, spec.seed)
    model = workload.build_model(spec.seed)
    step = 0
    if checkpoint is not None:
        state, step = load_model_state(checkpoint)
        model.load_state_dict(state)
    settings = spec.probes.settings
    batch = ProbeBatch.from_dataset(workload.split(spec.probes.split), settings.batch_size, settings.seed)
    result = run_probe(model, workload.loss, batch, settings, torch.device("cpu"))

    out_dir = writer.trial_dir(storage, spec.sweep_name, spec.trial_id)
    tag = {"trial_id": spec.trial_id, "step": step}
    written = {}
    for table, rows in (("curvature", result.curvature_rows), ("profile", result.profile_rows)):
        path = out_dir / f"{table}.parquet"
        kept = [r for r in writer.read_rows(path) if r["step"] != step]
        extra = {"sweep_name": spec.sweep_name} if table == "profile" else {}
        writer.write_rows(table, kept + [{**r, **tag, **extra} for r in rows], path)
        written[table] = path
    return {"step": step, "layers": len({r["layer"] for r in result.curvature_rows}),
            "unsupported": result.unsupported_rows(), "files": written}
