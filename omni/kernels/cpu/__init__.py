"""The C kernels in omni_cpu.c: compiled once per machine with the system C compiler, loaded with ctypes.

The library is built on first use (about 2 s) into ~/.cache/omni/kernels (or $XDG_CACHE_HOME/omni/kernels),
keyed by the sources (omni_cpu.c and the .c/.h files it includes beside it), the compiler flags and this
CPU's feature flags, so a cache shared between machines never hands one CPU code built for another, and an
upgraded source never loads a stale library. `-march=native` lets the compiler use AVX2/FMA/F16C where the
CPU has them; the C file has portable fallbacks for the rest.

Without a C compiler (or with OMNI_CPU_KERNELS=0) `library()` returns None, says why once in the log, and
callers use their torch paths. No torch headers are involved: the build is one `cc` call.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("omni_cpu.c")  # the one file compiled; it includes omni_attention.c
_BASE_FLAGS = ["-O3", "-fopenmp", "-shared", "-fPIC", "-std=gnu11"]
# Struct sizes the Python side writes (see omni_cpu.c): block_q4_1, block_q8_0, block_q16_act.
BLOCK_Q4_1, BLOCK_Q8_0, BLOCK_Q16_ACT = 20, 34, 72


class KernelBuildError(RuntimeError):
    pass


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(root) / "omni" / "kernels"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _sources() -> bytes:
    """Every C file and header beside SOURCE, named: a change to any of them must build a new library."""
    files = sorted(SOURCE.parent.glob("*.[ch]"))
    return b"\0".join(f.name.encode() + b"\0" + f.read_bytes() for f in files)


def _compile(cc: str, flags: list[str], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        target = Path(tmp) / out.name
        proc = subprocess.run([cc, *flags, "-o", str(target), str(SOURCE), "-lm"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise KernelBuildError(f"{cc} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        os.replace(target, out)  # atomic: a concurrent process sees the old file or the whole new one


def build(cc: str | None = None) -> Path:
    """Compile omni_cpu.c for this machine (or find it already built); returns the shared library's path."""
    cc = cc or os.environ.get("CC") or "cc"
    if shutil.which(cc) is None:
        raise KernelBuildError(f"no C compiler {cc!r} on PATH (install gcc, or set CC)")
    source = _sources()
    errors = []
    for arch in (["-march=native"], []):  # some compilers (older aarch64 gcc) refuse -march=native
        flags = _BASE_FLAGS + arch
        key = hashlib.sha256(b"\0".join([source, " ".join([cc, *flags]).encode(), _cpu_flags().encode(),
                                         platform.machine().encode()])).hexdigest()[:16]
        out = cache_dir() / f"omni_cpu-{key}.so"
        if out.exists():
            return out
        try:
            _compile(cc, flags, out)
            return out
        except KernelBuildError as e:
            errors.append(str(e))
    raise KernelBuildError("; ".join(errors))


class Library:
    """The loaded kernels with their ctypes signatures."""

    def __init__(self, path: Path) -> None:
        self.path = path
        lib = ctypes.CDLL(str(path))
        p, i = ctypes.c_void_p, ctypes.c_int
        lib.omni_block_sizes.argtypes, lib.omni_block_sizes.restype = [p], i
        lib.omni_quantize_q16_act.argtypes, lib.omni_quantize_q16_act.restype = [p, p, i, i], None
        lib.omni_q4_1_matmul.argtypes, lib.omni_q4_1_matmul.restype = [p, i, i, p, i, p, p, i], None
        lib.omni_q8_0_matmul.argtypes, lib.omni_q8_0_matmul.restype = [p, i, i, p, i, p, i], None
        lib.omni_decode_step.argtypes, lib.omni_decode_step.restype = [p, p, p, p, i], i
        lib.omni_f16_convert.argtypes, lib.omni_f16_convert.restype = [p, p, i, i], None
        sizes = (ctypes.c_int * 3)()
        self.simd = bool(lib.omni_block_sizes(ctypes.addressof(sizes)))
        if tuple(sizes) != (BLOCK_Q4_1, BLOCK_Q8_0, BLOCK_Q16_ACT):
            raise KernelBuildError(f"{path}: unexpected block sizes {tuple(sizes)}")
        self.lib = lib


@functools.cache
def library() -> Library | None:
    """The kernels for this machine, or None (with the reason logged once) when they cannot be built."""
    if os.environ.get("OMNI_CPU_KERNELS", "1") == "0":
        log.info("CPU kernels disabled by OMNI_CPU_KERNELS=0: using torch ops")
        return None
    try:
        return Library(build())
    except (KernelBuildError, OSError) as e:
        log.warning("CPU kernels unavailable, using torch ops (slower decoding): %s", e)
        return None
