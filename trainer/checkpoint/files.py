"""File-level helpers: atomic writes, content digests, and a no-unpickling safety scan.

Atomic, durable writes come from ``data_pipelines.atomic`` (one helper for shards and checkpoints).

DeepSpeed 0.19.8 reads its checkpoint files with ``torch.load(..., weights_only=False)`` (its
``TorchCheckpointEngine.load``), i.e. full unpickling. ``install_safe_loader`` swaps that method on
an engine for ``weights_only=True`` with the two DeepSpeed classes its files need allow-listed, and
``unsafe_globals`` lists what a file would import without executing anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from data_pipelines import atomic

# Classes DeepSpeed pickles into its ZeRO optimizer files (an Enum, plain attribute holders).
# Restoring them with weights_only=True sets attributes only: it runs no code from the file.
DEEPSPEED_SAFE_GLOBALS = (
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",  # a two-int dataclass
)


def _safe_global_objects() -> list[Any]:
    import importlib

    objects = []
    for dotted in DEEPSPEED_SAFE_GLOBALS:
        module_name, _, name = dotted.rpartition(".")
        try:
            objects.append(getattr(importlib.import_module(module_name), name))
        except (ImportError, AttributeError):
            continue  # another DeepSpeed version: whatever is missing cannot be in its files either
    return objects


def atomic_write_json(path: Path, data: Any) -> None:
    """``data`` as JSON at ``path``: whole or not at all, durable (see ``data_pipelines.atomic``)."""
    atomic.atomic_write_json(path, data, indent=1, sort_keys=True)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def describe_files(root: Path, with_hash: bool) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size": bytes, "sha256": hex or None}}`` for every file under ``root``."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        out[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path) if with_hash else None}
    return out


def unsafe_globals(path: Path) -> list[str]:
    """Globals a torch file would import beyond ``weights_only`` defaults and DeepSpeed's safe ones.

    Zip-format files (torch's default, DeepSpeed's too): reads only the pickle opcodes (no tensor
    data, no code run). Legacy-format files (``_use_new_zipfile_serialization=False``) cannot be
    scanned, so they are loaded with ``weights_only=True`` instead (runs no code, reads the tensors).
    Raises on an unreadable file.
    """
    if not zipfile.is_zipfile(path):
        try:
            safe_torch_load(path, map_location="cpu")
        except pickle.UnpicklingError as err:
            return [str(err).strip().splitlines()[0][:200]]
        return []
    found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    return [name for name in found if name not in DEEPSPEED_SAFE_GLOBALS]


def safe_torch_load(path: str | os.PathLike, map_location: Any = None) -> Any:
    """``torch.load`` with ``weights_only=True`` and only DeepSpeed's plain classes allowed."""
    with torch.serialization.safe_globals(_safe_global_objects()):
        return torch.load(path, map_location=map_location, weights_only=True)


def install_safe_loader(engine: Any) -> None:
    """Make ``engine.load_checkpoint`` read files with ``weights_only=True`` (idempotent)."""
    checkpoint_engine = engine.checkpoint_engine
    if getattr(checkpoint_engine, "_mdeq_safe", False):
        return
    checkpoint_engine.load = lambda path, map_location=None: safe_torch_load(path, map_location)
    checkpoint_engine._mdeq_safe = True


class DurableWrites:
    """Makes the files one rank writes into a checkpoint durable before the commit.

    ``around(tag_dir)`` (a context manager around DeepSpeed's save and ``write_extra``) fsyncs every
    file that appeared or changed in ``tag_dir`` while it was open: DeepSpeed's ``torch.save`` and
    most ``write_extra`` callbacks leave their bytes in the page cache. (Files other ranks wrote
    meanwhile may be fsynced too: harmless.) ``finish(tag_dir)`` then fsyncs the folders whose
    entries were created; after it, a machine crash cannot lose what this rank wrote.
    """

    def __init__(self) -> None:
        self.written: list[Path] = []

    @staticmethod
    def _snapshot(root: Path) -> dict[Path, tuple[int, int]]:
        # Other ranks write into the same folder meanwhile: their temporary files may vanish under us.
        found = {}
        for path in root.rglob("*"):
            try:
                info = path.stat()
            except FileNotFoundError:
                continue
            if path.is_file():
                found[path] = (info.st_size, info.st_mtime_ns)
        return found

    def around(self, root: Path):
        @contextlib.contextmanager
        def scope():
            before = self._snapshot(root) if root.is_dir() else {}
            yield
            for path, info in self._snapshot(root).items():
                if before.get(path) != info:
                    try:
                        atomic.fsync_file(path)
                    except FileNotFoundError:
                        continue  # another rank's temporary file, renamed meanwhile
                    self.written.append(path)

        return scope()

    def finish(self, tag_dir: Path) -> None:
        for folder in sorted({p.parent for p in self.written} | {tag_dir, tag_dir.parent}, reverse=True):
            atomic.fsync_dir(folder)
        self.written.clear()
