"""file_digest: the one file hasher, checked against hashlib on the same bytes."""

from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path

import pytest

from ccfraud import artifacts, checksums


@pytest.fixture
def small_file(tmp_path: Path) -> tuple[Path, bytes]:
    content = b'"Time","V1","Class"\n0.0,-1.3598071336738,"0"\n'
    path = tmp_path / "small.csv"
    path.write_bytes(content)
    return path, content


@pytest.mark.parametrize("algorithm", ["sha256", "md5", "sha1", "blake2b"])
def test_digest_of_a_small_file_equals_hashlib_on_its_bytes(small_file: tuple[Path, bytes], algorithm: str):
    path, content = small_file
    assert checksums.file_digest(path, algorithm) == hashlib.new(algorithm, content).hexdigest()


def test_default_is_sha256_and_wrappers_name_their_algorithm(small_file: tuple[Path, bytes]):
    path, content = small_file
    assert checksums.file_digest(path) == checksums.file_sha256(path) == hashlib.sha256(content).hexdigest()
    assert checksums.file_md5(path) == hashlib.md5(content).hexdigest()
    assert checksums.file_md5(str(path)) == checksums.file_md5(path), "a str path works too"


def test_empty_file(tmp_path: Path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert checksums.file_sha256(path) == hashlib.sha256(b"").hexdigest()


def test_a_file_larger_than_memory_budget_is_hashed_in_chunks(tmp_path: Path):
    """8 MiB plus an uneven tail hashes to the one-shot digest while allocating a fraction of the file."""
    content = bytes(range(256)) * (8 * 4096) + b"tail"
    path = tmp_path / "big.bin"
    path.write_bytes(content)
    expected = hashlib.sha256(content).hexdigest(), hashlib.md5(content).hexdigest()
    tracemalloc.start()
    try:
        got = checksums.file_sha256(path), checksums.file_md5(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == expected
    assert peak < len(content) // 8, f"hashing an {len(content):,}-byte file allocated {peak:,} bytes at its peak"


def test_unknown_or_variable_length_algorithm_is_named(small_file: tuple[Path, bytes]):
    path, _ = small_file
    with pytest.raises(ValueError, match=r"unknown hash algorithm 'sha257'; expected one of \[.*'sha256'"):
        checksums.file_digest(path, "sha257")
    with pytest.raises(ValueError, match=r"'shake_128' has a variable-length digest"):
        checksums.file_digest(path, "shake_128")


def test_missing_file_is_an_os_error_naming_it(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nowhere.bin"):
        checksums.file_sha256(tmp_path / "nowhere.bin")


def test_artifacts_uses_the_same_helper():
    assert artifacts.file_sha256 is checksums.file_sha256
