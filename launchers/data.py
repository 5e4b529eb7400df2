"""``specbench data prepare|list|clear``: the token cache of a sweep, seen from the command line.

``prepare`` builds (or finds and fully verifies) the cache entry of every text corpus a sweep
trains on, exactly as its trials would (`bench.data.prepare_tokens`), so a cluster can tokenize
once on one machine before the sweep starts; ``specbench sweep`` does the same in its driver
before any trial is launched. ``list`` shows the entries of a cache; ``clear`` deletes them (all,
or one ``--key``), each under its build lock.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the CLI's parser is built on every call: torch (under bench.data) only when used
    from bench.data.cache import TokenCache


class DataProblem(Exception):
    """A corpus that cannot be prepared (bad data or an unusable cache location): a user problem."""


def sweep_cache(cfg: Any) -> TokenCache | None:
    """The token cache a validated sweep's trials use (None with ``token_cache: false``)."""
    from bench.data.cache import TokenCache

    return TokenCache.of_trial(cfg.storage, cfg.training.input)


def prepare_workloads(workloads: list[Any], cache: TokenCache, log: Callable[[str], None]) -> list[tuple[str, str | None]]:
    """Build or find the entry of every distinct text corpus of ``workloads`` (`WorkloadConfig`);
    returns (dataset, key or None) pairs. Raises `DataProblem` naming the corpus."""
    from bench.data import prepare_tokens
    from bench.problems import shown

    done: dict[str, str | None] = {}
    for workload in workloads:
        ident = f"{workload.dataset} {sorted(workload.dataset_args.items())}"
        if ident in done:
            continue
        start = time.perf_counter()
        built_before = len(cache.built)
        try:
            key = prepare_tokens(workload.dataset, dict(workload.dataset_args), cache)
        except (ValueError, OSError) as exc:
            raise DataProblem(f"dataset {shown(workload.dataset)}: {exc}") from None
        done[ident] = key
        if key is None:
            log(f"{workload.dataset}: not a tokenized corpus, nothing to prepare")
        else:
            verb = "built" if len(cache.built) > built_before else "found"
            log(f"{workload.dataset}: {verb} token cache entry {key} in {time.perf_counter() - start:.1f} s "
                f"({cache.root / key})")
    return list(done.items())


def _cache_of(target: str, storage: str | None) -> TokenCache:
    """A CONFIG file's cache, or a cache directory / URI given directly."""
    from bench.data.cache import TokenCache

    if Path(target).suffix in (".yaml", ".yml"):
        from launchers.sweep import load_config

        cfg = load_config(target, {"storage": storage})
        return TokenCache.for_storage(cfg.storage, cfg.training.input.cache_dir)
    if storage is not None:
        raise DataProblem("--storage goes with a CONFIG, not with a cache directory")
    if "://" not in target and not Path(target).is_dir():
        raise DataProblem(f"{target} is neither a sweep CONFIG (.yaml) nor a cache directory")
    return TokenCache(target)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def cmd_data(args: argparse.Namespace, checked: Callable[[], Any]) -> int:
    """Body of ``specbench data``; ``checked()`` runs the validation gate on the CONFIG (prepare)."""
    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.action == "prepare":
        cfg = checked().cfg
        cache = sweep_cache(cfg)
        if cache is None:
            log("training.input.token_cache is false: trials tokenize in memory, nothing to prepare")
            return 0
        if args.workers is not None:
            cache.workers = args.workers
        cache.full_check = True
        prepare_workloads(cfg.workloads, cache, log)
        return 0
    cache = _cache_of(args.target, args.storage)
    if args.action == "list":
        entries = cache.entries()
        print(f"token cache {cache.location}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}")
        for e in entries:
            splits = e.get("splits", {})
            tokens = sum(s.get("tokens", 0) for s in splits.values())
            what = e.get("problem") or e.get("where") or (
                f"{e.get('meta', {}).get('source', '?')}  tokenizer {e['fields']['tokenizer'].get('kind')}  "
                f"{tokens:,} tokens in {', '.join(splits)}  {_size(cache.root / e['key']) / 2**20:.1f} MiB  "
                f"built {e.get('built', {}).get('at', '?')}")
            print(f"  {e['key']}  {what}")
        return 0
    try:
        removed = cache.remove(args.key)
    except ValueError as exc:
        raise DataProblem(str(exc)) from None
    print(f"removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'} from {cache.location}"
          + (f": {', '.join(removed)}" if removed else ""))
    return 0


def add_data_arguments(parser: argparse.ArgumentParser, overrides_help: str) -> None:
    """The ``data`` subcommand's actions and flags."""
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("prepare", help="tokenize every text corpus of a sweep into its token cache (or verify "
                       "the entries already there), as its trials would; run it once before a cluster sweep")
    p.add_argument("config", help="sweep YAML file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=overrides_help)
    p.add_argument("--storage", help="results root (overrides the config's storage; the cache defaults to "
                   "<storage>/_data_cache)")
    p.add_argument("--name", help="sweep name (overrides the config's name)")
    p.add_argument("--workers", type=int, help="tokenizer processes (default: training.input.tokenize_workers, "
                   "else every CPU of this machine)")
    for action, text in (("list", "show the entries of a token cache"),
                         ("clear", "delete the entries of a token cache (running trials keep the files they "
                          "mapped)")):
        p = sub.add_parser(action, help=text)
        p.add_argument("target", help="a sweep CONFIG (its training.input.cache_dir, default "
                       "<storage>/_data_cache) or a cache directory or URI")
        p.add_argument("--storage", help="with a CONFIG: results root overriding the config's storage")
        if action == "clear":
            p.add_argument("--key", help="delete only this entry (see `specbench data list`)")
