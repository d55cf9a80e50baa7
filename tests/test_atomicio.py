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


def test_files_get_the_umask_without_the_process_umask_ever_being_set(tmp_path, monkeypatch):
    """The umask can only be read by setting it, process-wide: another thread writing a file meanwhile (a Dask
    worker's threads write parts side by side) would race with that. The kernel applies it instead."""
    previous = os.umask(0o027)
    try:
        calls = []
        monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or 0)
        atomicio.write_text(tmp_path / "part.parquet", "data")
        with atomicio.atomic_path(tmp_path / "report.ipynb", suffix=".ipynb") as tmp:
            assert tmp.suffix == ".ipynb" and tmp.parent == tmp_path and tmp.stat().st_size == 0
            tmp.write_text("{}")
    finally:
        monkeypatch.undo()
        os.umask(previous)
    assert calls == []
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {"part.parquet": 0o640,
                                                                              "report.ipynb": 0o640}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
