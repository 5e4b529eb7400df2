"""The token cache: a text corpus tokenized once, then memory-mapped read-only by every trial and
rank that uses it.

Layout under the cache root (``training.input.cache_dir``, default ``<storage>/_data_cache``)::

    <key>/manifest.json          what the entry holds; written last, inside the entry
    <key>/<split>/00000.bin …    token parts: raw little-endian uint16 (uint32 for vocabularies
                                 above 65 536) ids, documents separated by the eos id
    <key>.lock                   the builder's lock (``filelock``; left in place, harmless)
    builds.log                   one line per build: key, host, pid, seconds (an audit trail)
    fingerprints/<digest>.json   content hashes of local data files by (path, size, mtime, inode)

**Key.** The first 24 hex digits of the sha256 of a JSON document naming everything that decides
the token ids: the cache format, the source by content (the stdlib files' digest for
``builtin:text``; a local file's sha256; a hub dataset's name, config, revision and the
``datasets`` fingerprints of its splits), the tokenizer by content (`Tokenizer.identity`) and the
rows selected (text column, split names, ``max_examples``, ``max_bytes``). ``seq_len`` and the
held-out fractions are not in it: blocks and the seeded carving of held-out splits are views over
the stored stream (`bench.data.packing`), so trials of any ``seq_len`` and every seed share one
tokenization. The key is recorded in ``runs.data_cache_key``.

**Concurrency.** A reader first looks without locking: an entry is visible only once complete,
because it is built in a private directory (``.build-<key>-<uuid>``) and published with one
atomic ``rename``. A reader that finds no valid entry takes the key's lock; the holder checks
again, then builds (or, for an object-store cache, downloads) while every other process waits on
the lock and finds the published entry when it gets it. So concurrent trials never build one
entry twice and never read a half-written one. A builder that dies releases its lock with its
process; the next one deletes its leftover build directory. Readers of a valid entry need no
write access (a cache can be prepared, then mounted read-only).

**Integrity.** Opening checks the manifest (format, key, the fields it was built for: a foreign
entry under this key is refused) and every part's size and a sampled digest (head, middle,
tail); ``specbench data prepare`` checks full sha256 digests. A corrupted, incomplete or foreign
entry is rebuilt under the lock, with a message naming it.

**Object stores.** A cache root that is an ``s3://``/``gs://`` URI (the default when the storage
is one) lives in this machine's staging tree (`bench.results.remote`): a missing entry is
downloaded under the lock before anything is built, and a built one is uploaded parts first,
manifest last. The lock is per machine there, so ``specbench sweep`` (and ``specbench data
prepare``) build every entry in the driver before any trial starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.data.corpus import SHARD_BYTES, files_sha256
from bench.data.packing import TokenStream

if TYPE_CHECKING:
    from bench.config import InputConfig

#: Version of the layout above; an entry of another format is rebuilt.
FORMAT = 1
#: The directory under a storage that holds its token cache unless ``cache_dir`` says otherwise
#: (a sweep name cannot start with ``_``, so it never collides with a sweep).
DEFAULT_DIR = "_data_cache"
MANIFEST = "manifest.json"
#: Bytes read at each of three places of a part for the sampled digest checked at every open.
SAMPLE_BYTES = 1 << 16

Log = Callable[[str], None]


class CacheProblem(Exception):
    """An entry that exists but cannot be used (the message says why)."""


def _stderr(message: str) -> None:
    print(f"specbench: {message}", file=sys.stderr, flush=True)


def cache_key(fields: Mapping[str, Any]) -> str:
    """The entry name of a corpus described by ``fields`` (see the module docstring)."""
    text = json.dumps({"format": FORMAT, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def sampled_digest(path: Path) -> str:
    """sha256 of a file's size and three ``SAMPLE_BYTES`` windows (start, middle, end): a cheap
    check that catches truncation and most overwrites without reading a large part whole."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        for offset in sorted({0, max(0, size // 2 - SAMPLE_BYTES // 2), max(0, size - SAMPLE_BYTES)}):
            f.seek(offset)
            digest.update(f.read(SAMPLE_BYTES))
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class CachedCorpus:
    """A valid entry: its key, directory and manifest; `stream` maps a split's parts read-only."""

    key: str
    path: Path
    manifest: dict[str, Any]

    def stream(self, split: str) -> TokenStream | None:
        """The split's tokens as read-only memory maps (None when the source had no such split)."""
        info = self.manifest["splits"].get(split)
        if info is None:
            return None
        dtype = np.dtype(self.manifest["dtype"])
        return TokenStream([np.memmap(self.path / p["file"], dtype=dtype, mode="r", shape=(p["tokens"],))
                            for p in info["parts"] if p["tokens"]])


class TokenCache:
    """A cache root (a path every node sees, or an object-store URI) and how entries are built."""

    def __init__(self, location: str | os.PathLike[str], workers: int | None = None,
                 shard_bytes: int = SHARD_BYTES, log: Log = _stderr) -> None:
        from bench.results import remote

        self.location = str(location)
        self.mirror = remote.mirror_for(self.location)
        self.root = self.mirror.local if self.mirror is not None else Path(self.location)
        self.workers = workers or os.cpu_count() or 1
        self.shard_bytes = shard_bytes
        self.log = log
        self.full_check = False  # check full digests of an existing entry (``specbench data prepare``)
        self.built: list[str] = []  # keys this object built, in order

    @classmethod
    def for_storage(cls, storage: str | os.PathLike[str], cache_dir: str | None = None, **kwargs: Any) -> TokenCache:
        """The cache of a sweep: ``cache_dir`` (a relative one is taken under the storage, which
        every node sees), else ``<storage>/_data_cache``."""
        if cache_dir is not None and ("://" in cache_dir or Path(cache_dir).is_absolute()):
            return cls(cache_dir, **kwargs)
        base, query = (str(storage).split("?", 1) + [""])[:2]
        joined = f"{base.rstrip('/')}/{cache_dir or DEFAULT_DIR}"
        return cls(joined + (f"?{query}" if query else ""), **kwargs)

    @classmethod
    def of_trial(cls, storage: str | os.PathLike[str], settings: InputConfig) -> TokenCache | None:
        """The cache a trial's ``training.input`` settings name (None with ``token_cache: false``)."""
        if not settings.token_cache:
            return None
        return cls.for_storage(storage, settings.cache_dir, workers=settings.tokenize_workers)

    # --- reading ------------------------------------------------------------------------------

    def lookup(self, fields: Mapping[str, Any]) -> CachedCorpus | None:
        """The valid local entry for ``fields``, or None (missing or unusable: `ensure` decides)."""
        try:
            return self._open(cache_key(fields), fields, self.full_check)
        except CacheProblem:
            return None

    def _open(self, key: str, fields: Mapping[str, Any] | None, full: bool = False) -> CachedCorpus | None:
        """The entry ``key`` after its checks; None when absent. Raises `CacheProblem`."""
        path = self.root / key
        if not path.exists():
            return None
        try:
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CacheProblem("incomplete (it has no manifest)") from None
        except (OSError, ValueError) as exc:
            raise CacheProblem(f"corrupted (unreadable manifest: {exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise CacheProblem(f"of another format ({manifest.get('format') if isinstance(manifest, dict) else '?'}; "
                               f"this specbench reads {FORMAT})")
        wanted = None if fields is None else json.loads(json.dumps(fields, sort_keys=True, default=str))
        if manifest.get("key") != key or (wanted is not None and manifest.get("fields") != wanted):
            raise CacheProblem("foreign (its manifest describes another corpus)")
        itemsize = np.dtype(manifest["dtype"]).itemsize
        for split in manifest["splits"].values():
            for part in split["parts"]:
                file = path / part["file"]
                try:
                    size = file.stat().st_size
                    if size != part["tokens"] * itemsize:
                        raise CacheProblem(f"corrupted ({part['file']} has {size} bytes, the manifest says "
                                           f"{part['tokens'] * itemsize})")
                    check = files_sha256([file]) if full else sampled_digest(file)
                except OSError as exc:
                    raise CacheProblem(f"incomplete ({part['file']}: {exc.strerror or exc})") from None
                if check != (part["sha256"] if full else part["sample"]):
                    raise CacheProblem(f"corrupted ({part['file']} does not match its digest)")
        return CachedCorpus(key, path, manifest)

    # --- building -----------------------------------------------------------------------------

    def ensure(self, fields: Mapping[str, Any], build: Callable[[Path], dict[str, Any]]) -> CachedCorpus:
        """The entry for ``fields``, built by ``build(directory)`` if no valid one exists (its key
        is then appended to `built`). ``build`` writes the part files into ``directory`` and
        returns the manifest body (``splits``, ``dtype``, ``meta``…). See the module docstring
        for the locking; with `full_check` an existing entry's full digests are verified."""
        key, full_check = cache_key(fields), self.full_check
        try:
            found = self._open(key, fields, full_check)
            if found is not None:
                return found
        except CacheProblem:
            pass  # decided under the lock: another process may be replacing it right now
        with self._locked(key):
            try:
                found = self._open(key, fields, full_check)
                if found is not None:
                    return found
            except CacheProblem as exc:
                self.log(f"data cache entry {key} at {self.root / key} is {exc}: rebuilding it")
            if self._pull(key, fields):
                return self._open(key, fields)  # type: ignore[return-value]
            self._build(key, fields, build)
            self.built.append(key)
        return self._open(key, fields)  # type: ignore[return-value]

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        from filelock import FileLock, Timeout

        self.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.root / f"{key}.lock"))
        try:
            lock.acquire(timeout=1.0)
        except Timeout:
            self.log(f"data cache entry {key}: waiting for another process that is building it")
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def _build(self, key: str, fields: Mapping[str, Any], build: Callable[[Path], dict[str, Any]]) -> None:
        for leftover in self.root.glob(f".build-{key}-*"):  # a builder that died (we hold the lock)
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = self.root / f".build-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        start = time.perf_counter()
        try:
            body = build(tmp)
            for split in body["splits"].values():
                for part in split["parts"]:
                    part["sample"] = sampled_digest(tmp / part["file"])
            seconds = time.perf_counter() - start
            built = {"host": socket.gethostname(), "pid": os.getpid(), "seconds": round(seconds, 3),
                     "at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "workers": self.workers}
            manifest = {"format": FORMAT, "key": key, "fields": fields, **body, "built": built}
            with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=1, sort_keys=True, default=str)
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(tmp)
            self._replace(key, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        with open(self.root / "builds.log", "a", encoding="utf-8") as log:
            log.write(json.dumps({"key": key, **built}, sort_keys=True) + "\n")
        if self.mirror is not None:
            self._push(key, manifest)

    def _replace(self, key: str, new: Path) -> None:
        """Publish ``new`` as entry ``key`` with one rename (an old entry is moved aside first:
        processes that mapped its files keep reading them until they close)."""
        final = self.root / key
        if final.exists():
            aside = self.root / f".old-{key}-{uuid.uuid4().hex[:8]}"
            os.rename(final, aside)
            shutil.rmtree(aside, ignore_errors=True)
        os.rename(new, final)
        _fsync_dir(self.root)

    # --- object stores ------------------------------------------------------------------------

    def _push(self, key: str, manifest: dict[str, Any]) -> None:
        """Upload an entry: parts first, manifest last (a reader of the store needs the manifest)."""
        assert self.mirror is not None
        for split in manifest["splits"].values():
            for part in split["parts"]:
                self.mirror.push_file(self.root / key / part["file"])
        self.mirror.push_file(self.root / key / MANIFEST)

    def _pull(self, key: str, fields: Mapping[str, Any]) -> bool:
        """Download entry ``key`` from the object store if it is there and checks out in full."""
        if self.mirror is None or not self.mirror.exists(f"{key}/{MANIFEST}"):
            return False
        try:
            # Files land one by one (each under a temporary name, then renamed); the entry is
            # used only after every digest checks out, and only this lock holder pulls it.
            self.mirror.pull_tree(key)
            self._open(key, fields, full=True)
            return True
        except (CacheProblem, OSError) as exc:
            self.log(f"data cache entry {key} in {self.location} is unusable ({exc}): rebuilding it")
            return False

    # --- inspecting and clearing --------------------------------------------------------------

    def entries(self) -> list[dict[str, Any]]:
        """The manifests of the entries on this machine; for an object-store cache also the keys
        only the store holds (``{"key": …, "where": "store"}``)."""
        found: dict[str, dict[str, Any]] = {}
        for path in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if path.is_dir() and not path.name.startswith(".") and path.name != "fingerprints":
                try:
                    found[path.name] = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    found[path.name] = {"key": path.name, "problem": "no readable manifest"}
        if self.mirror is not None:
            for key in self.mirror.list_dirs(""):
                if key not in found and not key.startswith(".") and key != "fingerprints":
                    found[key] = {"key": key, "where": "store"}
        return list(found.values())

    def remove(self, key: str | None = None) -> list[str]:
        """Delete one entry (or every entry), each under its lock so that no build is cut short;
        returns the keys removed. Processes that mapped an entry keep reading it until they close."""
        present = [e["key"] for e in self.entries()]
        if key is not None and key not in present:
            raise ValueError(f"no entry {key!r} in the token cache {self.location} (see `specbench data list`)")
        keys = [key] if key is not None else present
        removed = []
        for k in keys:
            with self._locked(k):
                path = self.root / k
                if path.exists():
                    aside = self.root / f".old-{k}-{uuid.uuid4().hex[:8]}"
                    os.rename(path, aside)
                    shutil.rmtree(aside, ignore_errors=True)
                    removed.append(k)
                if self.mirror is not None and self.mirror.exists(k):
                    self.mirror.delete(k)
                    removed += [] if k in removed else [k]
        return removed

    # --- source fingerprints ------------------------------------------------------------------

    def source_sha256(self, path: str | os.PathLike[str]) -> str:
        """A local data file's sha256, remembered by (path, size, mtime, inode) so that the many
        trials of a sweep do not each read a large file whole to find its cache entry."""
        from bench.results.writer import write_atomic_text

        file = Path(path).expanduser().resolve()
        st = file.stat()
        ident = {"path": str(file), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
        memo = self.root / "fingerprints" / f"{cache_key(ident)}.json"
        try:
            known = json.loads(memo.read_text(encoding="utf-8"))
            if known.get("ident") == ident:
                return str(known["sha256"])
        except (OSError, ValueError):
            pass
        digest = files_sha256([file])
        try:
            write_atomic_text(json.dumps({"ident": ident, "sha256": digest}), memo)
        except OSError:
            pass  # a read-only cache: the digest is simply computed again next time
        return digest
