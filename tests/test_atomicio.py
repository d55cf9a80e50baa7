"""Atomic writes: a reader sees the old file or the new one, never a half-written one."""

import os

import pytest

from ccfraud import atomicio


def test_write_replaces_whole_file_with_normal_permissions(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomicio.write_text(target, "old")
    atomicio.write_text(target, "new")
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomicio.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
