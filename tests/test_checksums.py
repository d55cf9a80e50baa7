"""file_digest: the one chunked file hasher, checked against hashlib on the same bytes."""

from __future__ import annotations

import hashlib
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


@pytest.mark.parametrize("chunk_bytes", [1, 7, 256, 10_000])
def test_multi_chunk_file_equals_a_one_shot_digest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   chunk_bytes: int):
    content = bytes(range(256)) * 20 + b"tail"  # 5124 bytes: an uneven last chunk for most chunk sizes
    path = tmp_path / "big.bin"
    path.write_bytes(content)
    monkeypatch.setattr(checksums, "CHUNK_BYTES", chunk_bytes)
    reads: list[int] = []
    real_open = open

    class CountingReader:
        """Wraps the file to count reads, proving the file is hashed in chunks, not in one read."""

        def __init__(self, handle):
            self.handle = handle

        def read(self, size: int = -1) -> bytes:
            reads.append(size)
            return self.handle.read(size)

        def __enter__(self):
            return self

        def __exit__(self, *exc_info: object) -> None:
            self.handle.close()

    monkeypatch.setattr(checksums, "open", lambda *args, **kwargs: CountingReader(real_open(*args, **kwargs)),
                        raising=False)  # only checksums' own open()
    assert checksums.file_md5(path) == hashlib.md5(content).hexdigest()
    assert checksums.file_sha256(path) == hashlib.sha256(content).hexdigest()
    assert set(reads) == {chunk_bytes}, "every read asks for one chunk"
    assert len(reads) == 2 * (len(content) // chunk_bytes + 1 + (len(content) % chunk_bytes > 0))


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
