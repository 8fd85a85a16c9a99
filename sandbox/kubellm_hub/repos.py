"""Model repositories on disk, as the hub describes them: ``ROOT/ORG/NAME`` is the repo ``ORG/NAME``.

Every repo has one revision, ``main``, whose commit id is derived from the content (the sorted paths and the
sha256 of each file), so the same files always give the same commit and any change gives a new one. Files are
hashed the way the Hub does: a git blob sha1 for every file (its ``oid``/``blobId``) and, for files the Hub keeps
in LFS (weights, and anything large), a sha256 (the ``lfs.oid`` and the ``X-Linked-Etag`` of a download).
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

# The Hub stores these in LFS (its default .gitattributes), and anything over 10 MiB.
_LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".model")
_LFS_MIN_BYTES = 10 * 1024 * 1024
# Bytes per element of each safetensors dtype, for the parameter count by dtype that model info reports.
SAFETENSORS_DTYPES = ("F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2")


@dataclass(frozen=True)
class RepoFile:
    path: str  # relative, with forward slashes
    size: int
    git_sha1: str
    sha256: str
    lfs: bool


@dataclass(frozen=True)
class Repo:
    repo_id: str
    folder: Path
    commit: str
    files: tuple[RepoFile, ...]
    # Parameters by safetensors dtype over every *.safetensors file; empty when there is none.
    parameters: dict[str, int]

    def file(self, path: str) -> RepoFile | None:
        return next((f for f in self.files if f.path == path), None)


def git_blob_sha1(data_path: Path) -> str:
    size = data_path.stat().st_size
    digest = hashlib.sha1(f"blob {size}\0".encode())
    with data_path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_of(data_path: Path) -> str:
    digest = hashlib.sha256()
    with data_path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def safetensors_parameters(path: Path) -> dict[str, int]:
    """Parameter count by dtype from a safetensors header (8-byte little-endian length, then JSON)."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    counts: dict[str, int] = {}
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        count = 1
        for dim in tensor["shape"]:
            count *= int(dim)
        counts[tensor["dtype"]] = counts.get(tensor["dtype"], 0) + count
    return counts


class RepoStore:
    """The repos under ``root``, re-read when their files change (hashes are cached by path, size and mtime)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._hashes: dict[tuple[str, int, int], tuple[str, str]] = {}

    def get(self, repo_id: str) -> Repo | None:
        parts = repo_id.split("/")
        if len(parts) != 2 or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            return None
        folder = self.root / parts[0] / parts[1]
        if not folder.is_dir():
            return None
        files: list[RepoFile] = []
        parameters: dict[str, int] = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            relative = path.relative_to(folder).as_posix()
            if any(part.startswith(".") for part in relative.split("/")):
                continue  # .git, .cache: never part of a repo's tree
            stat = path.stat()
            key = (str(path), stat.st_size, stat.st_mtime_ns)
            with self._lock:
                hashes = self._hashes.get(key)
            if hashes is None:
                hashes = (git_blob_sha1(path), sha256_of(path))
                with self._lock:
                    self._hashes[key] = hashes
            lfs = relative.endswith(_LFS_SUFFIXES) or stat.st_size >= _LFS_MIN_BYTES
            files.append(RepoFile(relative, stat.st_size, hashes[0], hashes[1], lfs))
            if relative.endswith(".safetensors"):
                for dtype, count in safetensors_parameters(path).items():
                    parameters[dtype] = parameters.get(dtype, 0) + count
        commit = hashlib.sha1()
        for f in files:
            commit.update(f"{f.path}\0{f.sha256}\n".encode())
        return Repo(repo_id, folder, commit.hexdigest(), tuple(files), parameters)
