"""Results on an object store (``storage: s3://bucket/prefix`` or ``gs://…``): a local staging
tree mirrored to the store.

Everything in the suite reads and writes results as local files (atomic renames, DeepSpeed
checkpoints, pandas/pyarrow readers); an object store has neither directories nor renames. So a
URI storage is served by a *staging directory* on each machine (``SPECBENCH_STAGING``, default
``~/.cache/specbench/staging``, then the URI's bucket and path) holding the same layout as a
path storage, and a :class:`Mirror` that copies files between it and the store through
``pyarrow.fs`` (which resolves the URI, its credentials and options such as
``?endpoint_override=host:port&scheme=http`` for MinIO and other S3-compatible stores):

- **push** after every write: a result file is uploaded as soon as it is atomically in place
  locally (an object PUT is itself atomic, so a reader of the store never sees half a file);
  a checkpoint is uploaded tag first and its ``latest`` pointer last, and older tags are deleted
  only afterwards, so the store always holds one complete checkpoint;
- **pull** before reading: a sweep's driver (resume, ``status``, ``consolidate``, ``report``)
  downloads the sweep's result files; a trial's workers download their trial directory,
  checkpoint included, before training, so an interrupted trial resumes on whichever node Ray
  puts it, from the checkpoint another node wrote.

Downloads land under a temporary name and are renamed into place, so ranks sharing a node may
pull the same files at once.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from pyarrow import fs as pafs

#: Schemes accepted as object-store storage (pyarrow filesystems; the suite tests s3 against a
#: local S3-compatible server, gs goes through the same code).
SCHEMES = ("s3", "gs", "gcs")


def is_uri(storage: str | os.PathLike[str]) -> bool:
    """True for ``scheme://…`` storages (object stores); False for plain paths."""
    return "://" in str(storage)


def scheme(storage: str) -> str:
    return urlsplit(str(storage)).scheme.lower()


def staging_root(uri: str) -> Path:
    """This machine's local mirror of ``uri``: ``$SPECBENCH_STAGING/<scheme>/<bucket>/<path>``."""
    parts = urlsplit(uri)
    base = Path(os.environ.get("SPECBENCH_STAGING") or Path.home() / ".cache" / "specbench" / "staging")
    return base / parts.scheme / parts.netloc / parts.path.strip("/")


def local_root(storage: str | os.PathLike[str]) -> Path:
    """Where results are read and written on this machine: the path itself, or the staging tree
    of a URI."""
    return staging_root(str(storage)) if is_uri(storage) else Path(storage)


class Mirror:
    """Copies files between ``staging_root(uri)`` and ``uri`` (relative paths are the same on
    both sides)."""

    def __init__(self, uri: str):
        self.uri = uri
        self.fs, path = pafs.FileSystem.from_uri(uri)
        self.root = path.rstrip("/")
        self.local = staging_root(uri)

    def _remote(self, rel: str | Path) -> str:
        rel = str(rel).strip("/")
        return f"{self.root}/{rel}" if rel else self.root

    def check_writable(self) -> None:
        """Write, read back and delete a small object; raises OSError naming the cause."""
        path = self._remote(".specbench-write-test")
        with self.fs.open_output_stream(path) as out:
            out.write(b"ok")
        with self.fs.open_input_stream(path) as src:
            if src.read() != b"ok":
                raise OSError("a test object read back different bytes")
        self.fs.delete_file(path)

    # --- upload -------------------------------------------------------------------------------

    def push_file(self, local_path: str | Path) -> None:
        """Upload one file of the staging tree to the same relative key."""
        local_path = Path(local_path)
        rel = local_path.resolve().relative_to(self.local.resolve())
        # No create_dir first: object stores have no directories, and on S3 it would add a marker
        # object (one more request) per upload.
        with open(local_path, "rb") as src, self.fs.open_output_stream(self._remote(rel)) as out:
            while chunk := src.read(8 << 20):
                out.write(chunk)

    def push_tree(self, local_dir: str | Path) -> int:
        """Upload every file under ``local_dir`` (temporary files excepted); returns the count."""
        n = 0
        for path in sorted(Path(local_dir).rglob("*")):
            if path.is_file() and not _is_temporary(path.name):
                self.push_file(path)
                n += 1
        return n

    def delete(self, rel: str | Path) -> None:
        """Remove a remote file or directory (missing is fine)."""
        path = self._remote(rel)
        info = self.fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(path)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(path)

    def move(self, rel: str | Path, new_rel: str | Path) -> None:
        """Copy a remote directory to a new name, then delete the old one (stores cannot rename)."""
        src, dst = self._remote(rel), self._remote(new_rel)
        for info in self.fs.get_file_info(pafs.FileSelector(src, recursive=True, allow_not_found=True)):
            if info.type == pafs.FileType.File:
                self.fs.copy_file(info.path, dst + info.path[len(src):])
        self.delete(rel)

    # --- download -----------------------------------------------------------------------------

    def pull_tree(self, rel: str | Path, skip_dirs: Iterable[str] = ()) -> int:
        """Download every remote file under ``rel`` into the staging tree (files inside a
        directory named in ``skip_dirs`` are left out); returns the number of files."""
        skip_dirs = set(skip_dirs)
        base = self._remote(rel)
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        n = 0
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            sub = info.path[len(self.root):].strip("/")
            if skip_dirs & set(sub.split("/")[:-1]):
                continue
            self._download(info.path, self.local / sub)
            n += 1
        return n

    def list_dirs(self, rel: str | Path) -> list[str]:
        """Names of the remote directories directly under ``rel``."""
        infos = self.fs.get_file_info(pafs.FileSelector(self._remote(rel), allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def exists(self, rel: str | Path) -> bool:
        return self.fs.get_file_info(self._remote(rel)).type != pafs.FileType.NotFound

    def _download(self, remote: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{local.name}.", suffix=".tmp", dir=local.parent)
        try:
            with os.fdopen(fd, "wb") as out, self.fs.open_input_stream(remote) as src:
                while chunk := src.read(8 << 20):
                    out.write(chunk)
            os.replace(tmp, local)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _is_temporary(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def mirror_for(storage: str | os.PathLike[str] | None) -> Mirror | None:
    """A :class:`Mirror` for a URI storage, None for a path."""
    return Mirror(str(storage)) if storage is not None and is_uri(storage) else None


# --- the mirrors active in this process -------------------------------------------------------

_ACTIVE: list[Mirror] = []


def activate(storage: str | os.PathLike[str] | None) -> Mirror | None:
    """Register the mirror of a URI storage in this process (None for a path). From then on every
    atomic write under its staging tree (:func:`bench.results.writer.write_atomic`) is uploaded."""
    if storage is None or not is_uri(storage):
        return None
    for m in _ACTIVE:
        if m.uri == str(storage):
            return m
    mirror = Mirror(str(storage))
    _ACTIVE.append(mirror)
    return mirror


def deactivate(storage: str | os.PathLike[str]) -> None:
    """Stop uploading for ``storage`` in this process (readers keep derived files local)."""
    _ACTIVE[:] = [m for m in _ACTIVE if m.uri != str(storage)]


def mirror_of(path: str | os.PathLike[str]) -> Mirror | None:
    """The active mirror whose staging tree contains ``path``, if any."""
    if not _ACTIVE:  # a path storage: every write passes here, so no filesystem calls
        return None
    p = Path(path).resolve()
    for m in _ACTIVE:
        if p.is_relative_to(m.local.resolve()):
            return m
    return None


def after_write(path: str | os.PathLike[str]) -> None:
    """Upload ``path`` if it lies in an active mirror's staging tree (no-op otherwise)."""
    mirror = mirror_of(path)
    if mirror is not None:
        mirror.push_file(path)


def relative(mirror: Mirror, path: str | os.PathLike[str]) -> str:
    """``path`` (inside the staging tree) as a key relative to the storage root."""
    return Path(path).resolve().relative_to(mirror.local.resolve()).as_posix()
