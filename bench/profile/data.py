"""The input pipeline, measured (the profile config's ``data`` section).

``op = data_first_step`` — for each text corpus and each way of reading it, ``ranks`` processes
(one gloo process group; they start together after a barrier, as a trial's ranks do) each load
the workload, build the model and take its first training step (the first micro-batch of the
global-batch sampler, forward, backward, AdamW). Modes:

- ``memory``: no token cache, every rank tokenizes the corpus itself (``token_cache: false``);
- ``cache_cold``: an empty token cache: one rank builds the entry (shard by shard, in
  ``tokenize_workers`` processes) while the others wait on its lock, then all map it;
- ``cache_warm``: the entry exists; every rank only finds and maps it.

A row gives the time to the first step (``seconds``: the slowest rank; ``seconds_min`` the
fastest; ``load_seconds``: the slowest rank's dataset load) and the largest peak resident set
of a rank (``peak_memory_bytes``) with its growth over the rank's start
(``rss_growth_bytes``, ``memory_kind = cpu_peak_rss``). DeepSpeed's engine start, a constant of
a few seconds, is not part of it. Memory-mapped pages a rank touched count in its resident set,
but they are shared by every process that maps the file; the tokenizer processes of a cold
build are other processes and not counted. A corpus given as ``generate_mb`` is written as
JSON lines (Zipf-distributed pseudo-words, documents of 1–16 KiB) into a temporary directory,
converted to Arrow by ``datasets`` once before the first mode (so that no mode pays for it), and
deleted afterwards.

``op = input_pipeline`` — an image set of PNG files (an imagefolder directory, read through
``hf:<dir>``, decoded on access) against a timm model: the model's training rate on one fixed
micro-batch (``model_samples_per_s``); for each number of background loader workers, the
pipeline's own rate (``samples_per_s``: micro-batches taken as fast as it delivers them) and,
alternating with training steps as the trial loop does, the median wait for input per step
(``data_time_s``), the median step (``step_time_s``) and their ratio (``input_share``).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.profile.config import DataConfig, DataCorpus, DataImagesConfig

MODES = ("memory", "cache_cold", "cache_warm")

Log = Callable[[str], None]


def _peak_rss() -> int:
    """Peak resident set of this process so far, bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def generate_corpus(path: Path, mb: float, seed: int) -> Path:
    """A JSON-lines text corpus of about ``mb`` MiB: documents of 1–16 KiB of Zipf-distributed
    pseudo-words (a vocabulary of 20 000), one ``{"text": …}`` per line."""
    import numpy as np

    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = np.array(["".join(rng.choice(letters, size=int(n))) for n in rng.integers(2, 10, size=20_000)])
    weights = 1.0 / np.arange(1, len(words) + 1)
    weights /= weights.sum()
    target = int(mb * (1 << 20))
    written = 0
    with open(path, "w", encoding="utf-8") as out:
        while written < target:
            ids = rng.choice(len(words), size=(256, 2048), p=weights)  # 256 documents at a time
            lengths = rng.integers(150, 2500, size=256)
            for row, n in zip(ids, lengths, strict=True):
                line = json.dumps({"text": " ".join(words[row[:n]])}) + "\n"
                out.write(line)
                written += len(line)
    return path


def _rank_main(rank: int, world: int, port: int, job: dict[str, Any], out_dir: str) -> None:
    """One rank of a ``data_first_step`` measurement (a spawned process)."""
    code = 0
    try:
        import torch.distributed as dist

        from bench.batching import GlobalBatchSampler
        from bench.config import WorkloadConfig
        from bench.data.cache import TokenCache
        from bench.distributed import configure_cpu_threads, init_process_group
        from bench.seeds import data_seed
        from bench.workload import Workload, model_batch

        configure_cpu_threads(job["threads"])
        init_process_group(rank, world, port)
        import torch

        import optimizers

        rss_start = _peak_rss()
        dist.barrier()  # every rank starts loading at once, as in a trial
        start = time.perf_counter()
        cache = TokenCache(job["cache_dir"], workers=job["tokenize_workers"]) if job["cache_dir"] else None
        config = WorkloadConfig(model=job["model"], dataset=job["dataset"], model_args=job["model_args"],
                                dataset_args=job["dataset_args"])
        workload = Workload.load(config, job["seed"], cache)
        loaded = time.perf_counter()
        model = workload.build_model(job["seed"])
        opt = optimizers.build("adamw", model, lr=1e-3)
        train = workload.split("train")
        sampler = GlobalBatchSampler(len(train), data_seed(job["seed"]), job["micro_batch"], 1, world, rank)
        x, y = model_batch(train, sampler.indices(0, 0), torch.device("cpu"), torch.float32)
        workload.train_step(model, opt, x, y)
        done = time.perf_counter()
        stream = getattr(train, "stream", None)
        result = {"seconds": done - start, "load_seconds": loaded - start, "peak_rss": _peak_rss(),
                  "rss_growth": _peak_rss() - rss_start, "tokens": len(stream) if stream is not None else None,
                  "cache_key": workload.data.cache_key or ""}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def _first_step(cfg: DataConfig, dataset: str, args: dict[str, Any], cache_dir: Path | None, seed: int,
                tmp: Path) -> list[dict[str, Any]]:
    """Per-rank results of one ``data_first_step`` measurement."""
    import torch.multiprocessing as mp

    from bench.distributed import free_port

    out = Path(tempfile.mkdtemp(dir=tmp, prefix="ranks-"))
    job = {"dataset": dataset, "dataset_args": args, "model": cfg.model, "model_args": cfg.model_args,
           "micro_batch": cfg.micro_batch, "seed": seed, "threads": cfg.threads,
           "cache_dir": str(cache_dir) if cache_dir is not None else None, "tokenize_workers": cfg.tokenize_workers}
    mp.start_processes(_rank_main, args=(cfg.ranks, free_port(), job, str(out)), nprocs=cfg.ranks,
                       start_method="spawn", join=True)
    results = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    shutil.rmtree(out, ignore_errors=True)
    if len(results) != cfg.ranks:
        raise RuntimeError(f"{cfg.ranks - len(results)} of {cfg.ranks} ranks failed (their traceback is above)")
    return results


def _corpus_rows(cfg: DataConfig, index: int, corpus: DataCorpus, seed: int, tmp: Path,
                 log: Log | None) -> list[dict[str, Any]]:
    args = dict(corpus.dataset_args)
    dataset = corpus.dataset
    label = dataset
    if corpus.generate_mb is not None:
        import datasets

        path = generate_corpus(tmp / f"corpus{index}.jsonl", corpus.generate_mb, seed)
        args.setdefault("cache_dir", str(tmp / "hf-datasets"))
        datasets.load_dataset("json", data_files=str(path), cache_dir=args["cache_dir"])  # Arrow once, for every mode
        dataset, label = str(path), f"generated {corpus.generate_mb:g} MiB jsonl"
    size = Path(dataset).stat().st_size if Path(dataset).is_file() else None
    cache_dir = tmp / f"token-cache{index}"
    rows = []
    for mode in MODES:
        if log:
            log(f"data: {label}, {mode}, {cfg.ranks} ranks")
        base = {"op": "data_first_step", "phase": "measure", "method": mode, "model": cfg.model, "dataset": label,
                "dataset_args": json.dumps(corpus.dataset_args, sort_keys=True), "corpus_bytes": size,
                "ranks": cfg.ranks, "batch": cfg.micro_batch, "memory_kind": "cpu_peak_rss"}
        try:
            ranks = _first_step(cfg, dataset, args, None if mode == "memory" else cache_dir, seed, tmp)
        except Exception as exc:  # a failed mode is a row, not a lost job
            rows.append({**base, "status": "error", "error": f"{type(exc).__name__}: {exc}"})
            continue
        rows.append({**base, "status": "ok", "seconds": max(r["seconds"] for r in ranks),
                     "seconds_min": min(r["seconds"] for r in ranks), "load_seconds": max(r["load_seconds"] for r in ranks),
                     "peak_memory_bytes": float(max(r["peak_rss"] for r in ranks)),
                     "rss_growth_bytes": float(max(r["rss_growth"] for r in ranks)),
                     "tokens": ranks[0]["tokens"], "cache_key": ranks[0]["cache_key"]})
        if log:
            r = rows[-1]
            log(f"  first step after {r['seconds']:.1f} s (load {r['load_seconds']:.1f} s), peak RSS "
                f"{r['peak_memory_bytes'] / 2**20:.0f} MiB (+{r['rss_growth_bytes'] / 2**20:.0f} MiB)")
    if corpus.generate_mb is not None:
        Path(dataset).unlink(missing_ok=True)
        shutil.rmtree(args["cache_dir"], ignore_errors=True)
    shutil.rmtree(cache_dir, ignore_errors=True)
    return rows


def write_image_folder(root: Path, cfg: DataImagesConfig, seed: int) -> Path:
    """``cfg.count`` random RGB PNG files in ``root/train/class_<k>/`` (an imagefolder dataset)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(cfg.count):
        folder = root / "train" / f"class_{i % cfg.classes}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (rng.random((cfg.size, cfg.size, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:06d}.png")
    return root


def _image_rows(cfg: DataImagesConfig, seed: int, tmp: Path, log: Log | None) -> list[dict[str, Any]]:
    import torch

    import optimizers
    from bench.batching import GlobalBatchSampler
    from bench.data import load_dataset
    from bench.data.loader import InputPipeline
    from bench.workload import Workload, model_batch

    root = write_image_folder(tmp / "images", cfg, seed)
    cpu = torch.device("cpu")
    workload = Workload(load_dataset(f"hf:{root}", {"cache_dir": str(tmp / "hf-images")}, seed), cfg.model)
    model = workload.build_model(seed)
    opt = optimizers.build("adamw", model, lr=1e-3)
    train = workload.split("train")
    sampler = GlobalBatchSampler(len(train), seed, cfg.micro_batch, 1, 1, 0)
    x, y = model_batch(train, sampler.indices(0, 0), cpu, torch.float32)
    model_times = []
    for i in range(cfg.warmup + cfg.steps):
        start = time.perf_counter()
        workload.train_step(model, opt, x, y)
        if i >= cfg.warmup:
            model_times.append(time.perf_counter() - start)
    model_rate = cfg.micro_batch / statistics.median(model_times)
    last = cfg.warmup + cfg.steps
    rows = []
    for workers in cfg.workers:
        fetch, wait, step = [], [], []
        pipe = InputPipeline(train, sampler, last, cpu, torch.float32, workers=workers, prefetch=2, seed=seed)
        for s in range(1, last + 1):  # the pipeline alone
            start = time.perf_counter()
            pipe.batch(s, 0)
            fetch.append(time.perf_counter() - start)
        pipe.close()
        pipe = InputPipeline(train, sampler, last, cpu, torch.float32, workers=workers, prefetch=2, seed=seed)
        for s in range(1, last + 1):  # alternating with training steps, as the trial loop does
            start = time.perf_counter()
            xb, yb = pipe.batch(s, 0)
            got = time.perf_counter()
            workload.train_step(model, opt, xb, yb)
            wait.append(got - start)
            step.append(time.perf_counter() - start)
        pipe.close()
        rate = cfg.micro_batch / statistics.median(fetch[cfg.warmup:])
        data_s, step_s = statistics.median(wait[cfg.warmup:]), statistics.median(step[cfg.warmup:])
        rows.append({"op": "input_pipeline", "phase": "measure", "method": f"workers={workers}", "status": "ok",
                     "model": cfg.model, "dataset": f"{cfg.count} PNG files {cfg.size}x{cfg.size}", "batch": cfg.micro_batch,
                     "repeats": cfg.steps, "warmup": cfg.warmup, "loader_workers": workers, "samples_per_s": rate,
                     "model_samples_per_s": model_rate, "ratio_to_model": rate / model_rate, "data_time_s": data_s,
                     "step_time_s": step_s, "input_share": data_s / step_s, "seconds": step_s})
        if log:
            log(f"data: images, {workers} loader workers: pipeline {rate:.0f} samples/s vs model {model_rate:.0f}; "
                f"in the loop {data_s * 1e3:.1f} ms of {step_s * 1e3:.1f} ms per step wait for input")
    return rows


def measure_data(cfg: DataConfig, seed: int = 0, log: Log | None = None) -> list[dict[str, Any]]:
    """Every row of the ``data`` section (see the module docstring); temporary files are removed."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with tempfile.TemporaryDirectory(prefix="specbench-data-") as tmp:
            rows = []
            for i, corpus in enumerate(cfg.corpora):
                rows += _corpus_rows(cfg, i, corpus, seed, Path(tmp), log)
            if cfg.images is not None:
                rows += _image_rows(cfg.images, seed, Path(tmp), log)
            return rows
    finally:
        torch.set_num_threads(threads)
