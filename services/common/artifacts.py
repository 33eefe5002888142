"""Model artifacts as one digest, and private verified copies of them for engines that
load from a path themselves.

An artifact is a single file (a GGUF for llama.cpp) or a directory (a Hugging Face model
directory for vLLM: ``config.json``, tokenizer files, ``*.safetensors``). Its digest is:

- a file: the SHA-256 of its bytes;
- a directory: the SHA-256 of its **manifest**, the canonical JSON
  ``{"argus": "artifact-manifest/1", "files": [[path, size, sha256], ...]}`` of every
  regular file under it, sorted by its ``/``-separated relative path. A symbolic link,
  a device or a socket anywhere in it is refused (what it points to could change after
  the check); so is an empty directory. This is the shape of OpenSSF model-signing's
  manifest (one digest per file, signed as a whole; docs/governance.md).

:class:`StagedArtifact` is the check for an engine that opens the path itself (vLLM runs
its engine in other processes, so the sealed-memory copy of
:class:`services.common.llm.VerifiedArtifact` cannot be handed over): every file is
hashed **while** it is copied into a fresh private directory (0700, files 0400), the
digest is compared with the registered one, and only then is the copy's path given to
the engine. The bytes checked are the bytes loaded; swapping a file in the model store
after the check changes nothing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from services.common.llm import ArtifactDigestMismatch
from services.common.signing import canonical

MANIFEST = "artifact-manifest/1"
CHUNK = 1 << 22


class ArtifactRejected(ValueError):
    """An artifact Argus will not hash or load (a link, a special file, nothing in it)."""


def _files(root: Path) -> list[tuple[str, Path]]:
    """Every regular file under ``root`` as (relative posix path, path), sorted; refuses
    links and special files, wherever they are."""
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            mode = os.lstat(path).st_mode
            rel = path.relative_to(root).as_posix()
            if stat.S_ISLNK(mode):
                raise ArtifactRejected(f"{root}: {rel} is a symbolic link (what it points to could change)")
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise ArtifactRejected(f"{root}: {rel} is not a regular file")
            out.append((rel, path))
    if not out:
        raise ArtifactRejected(f"{root}: the artifact directory holds no file")
    return sorted(out)


def _copy_hashing(src: BinaryIO, dst: BinaryIO | None) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    for chunk in iter(lambda: src.read(CHUNK), b""):
        h.update(chunk)
        size += len(chunk)
        if dst is not None:
            dst.write(chunk)
    return size, h.hexdigest()


def _open(path: Path) -> BinaryIO:
    """Open for reading without following a link put there since the listing."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    return os.fdopen(fd, "rb")


def manifest_digest(entries: list[tuple[str, int, str]]) -> str:
    return hashlib.sha256(canonical({"argus": MANIFEST, "files": [list(e) for e in entries]})).hexdigest()


def _digest(source: Path, copy_to: Callable[[str], BinaryIO] | None) -> str:
    st = os.lstat(source)
    if stat.S_ISLNK(st.st_mode):
        raise ArtifactRejected(f"{source} is a symbolic link: name the artifact itself")
    if stat.S_ISREG(st.st_mode):
        with _open(source) as f:
            if copy_to is None:
                return _copy_hashing(f, None)[1]
            with copy_to(source.name) as out:
                return _copy_hashing(f, out)[1]
    if not stat.S_ISDIR(st.st_mode):
        raise ArtifactRejected(f"{source} is neither a file nor a directory")
    entries = []
    for rel, path in _files(source):
        with _open(path) as f:
            if copy_to is None:
                size, digest = _copy_hashing(f, None)
            else:
                with copy_to(rel) as out:
                    size, digest = _copy_hashing(f, out)
        entries.append((rel, size, digest))
    return manifest_digest(entries)


def artifact_digest(source: Path) -> str:
    """The artifact's digest (a file's SHA-256, or a directory's manifest digest)."""
    return _digest(Path(source), None)


class StagedArtifact:
    """A private copy of an artifact, made while its digest is computed; raises
    :class:`ArtifactDigestMismatch` (and leaves nothing behind) when the digest is not
    ``expected``. ``path`` is what the engine loads; ``close()`` removes the copy."""

    def __init__(self, source: Path, expected: str | None, parent: Path | None = None) -> None:
        self.source = Path(source)
        self.root = Path(tempfile.mkdtemp(prefix="argus-artifact-", dir=parent))  # 0700
        os.chmod(self.root, 0o700)
        is_file = stat.S_ISREG(os.lstat(self.source).st_mode)
        self.path = self.root / self.source.name if is_file else self.root / "model"

        def copy_to(rel: str) -> BinaryIO:
            target = self.root / rel if is_file else self.path / rel
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            return os.fdopen(fd, "wb")

        try:
            self.digest = _digest(self.source, copy_to)
            if expected and self.digest != expected.lower():
                raise ArtifactDigestMismatch(
                    f"{self.source}: sha256 {self.digest} does not match the registered digest {expected}"
                )
            for dirpath, _, filenames in os.walk(self.root):
                for name in filenames:
                    os.chmod(Path(dirpath) / name, 0o400)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> StagedArtifact:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
