"""Partitioned Parquet datasets: parts first, manifest last; readers trust only the manifest."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

from ccfraud import lake


def frames(count: int = 3, rows: int = 50) -> list[pd.DataFrame]:
    return [pd.DataFrame({"a": np.arange(rows) + i * rows, "b": np.full(rows, float(i))}) for i in range(count)]


def breaking_after_one_frame() -> Iterator[pd.DataFrame]:
    """A source that yields one frame, then fails."""
    yield frames(1)[0]
    raise RuntimeError("source broke mid-way")


def test_written_frames_read_back_in_order_with_a_manifest(tmp_path):
    target = str(tmp_path / "ds")
    manifest = lake.write_frames(frames(), target, extra={"source": "test"})
    assert manifest["rows"] == 150 and manifest["columns"] == ["a", "b"] and manifest["source"] == "test"
    assert len(manifest["parts"]) == 3
    pd.testing.assert_frame_equal(lake.read_pandas(target), pd.concat(frames(), ignore_index=True))
    assert lake.verify(target) == manifest


def test_a_failed_write_commits_nothing_and_keeps_the_previous_dataset(tmp_path):
    target = str(tmp_path / "ds")
    lake.write_frames(frames(2), target)
    before = lake.read_pandas(target)

    with pytest.raises(RuntimeError, match="mid-way"):
        lake.write_frames(breaking_after_one_frame(), target)
    pd.testing.assert_frame_equal(lake.read_pandas(target), before)
    assert part_files(tmp_path / "ds") == listed(target)  # the failed write's part was removed


def test_a_manifest_that_cannot_be_written_leaves_no_part(tmp_path, monkeypatch):
    """The parts are written, the commit itself fails (a full disk): nothing of the job may stay."""
    target = tmp_path / "ds"

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lake.atomicio, "write_text", full_disk)
    with pytest.raises(OSError, match="No space left"):
        lake.write_frames(frames(3), str(target))
    assert not target.exists() or list(target.rglob("*.parquet")) == []


def test_a_cleanup_that_fails_too_keeps_the_jobs_own_error(tmp_path, monkeypatch, caplog):
    """The source broke, then the store could not be listed to remove the parts: the source's error is the one
    raised, the cleanup's is logged with what is left."""
    def unreachable(*args, **kwargs):
        raise ConnectionError("store unreachable")

    monkeypatch.setattr(lake, "_remove_unlisted", unreachable)
    with pytest.raises(RuntimeError, match="source broke mid-way"):
        lake.write_frames(breaking_after_one_frame(), str(tmp_path / "ds"))
    assert "could not remove the failed job's parts under" in caplog.text and "store unreachable" in caplog.text


@pytest.mark.parametrize(("text", "problem"), [("{not json", "it is not valid JSON"),
                                               ('["a", "list"]', "expected a JSON object with a list of parts"),
                                               ('{"format": "x"}', "expected a JSON object with a list of parts")])
def test_a_manifest_that_is_not_one_is_named(tmp_path, text, problem):
    target = tmp_path / "ds"
    lake.write_frames(frames(1), str(target))
    (target / lake.MANIFEST).write_text(text)
    with pytest.raises(lake.LakeError, match=rf"^{re.escape(str(target))}/_manifest.json is not a manifest: {problem}"):
        lake.read_manifest(str(target))


def test_a_failed_write_over_a_manifest_it_cannot_read_removes_nothing(tmp_path, caplog):
    """Whatever is committed there, this code cannot tell which parts are its: a failed job leaves them all."""
    target = tmp_path / "ds"
    lake.write_frames(frames(2), str(target))
    (target / lake.MANIFEST).write_text("{not json")
    before = part_files(target)

    with pytest.raises(RuntimeError, match="mid-way"):
        lake.write_frames(breaking_after_one_frame(), str(target))
    assert set(before) <= set(part_files(target))
    assert "removing nothing under" in caplog.text and "is not a manifest" in caplog.text


def part_files(dataset) -> list[str]:
    return sorted(str(p.relative_to(dataset)) for p in dataset.rglob("*.parquet"))


def listed(target: str) -> list[str]:
    return sorted(part["path"] for part in lake.read_manifest(target)["parts"])


def test_a_new_commit_replaces_the_old_parts(tmp_path):
    target = str(tmp_path / "ds")
    lake.write_frames(frames(2), target)
    manifest = lake.write_frames(frames(1), target)
    assert part_files(tmp_path / "ds") == [manifest["parts"][0]["path"]]
    assert len(lake.read_pandas(target)) == 50


def tree(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_same_data_writes_the_same_files_byte_for_byte(tmp_path, dask_client):
    """Content-addressed: DVC sees an unchanged output when a stage rewrites the same data, and skips what follows."""
    import dask.dataframe as dd

    lake.write_frames(frames(), str(tmp_path / "one"), extra={"source": "test"})
    lake.write_frames(frames(), str(tmp_path / "two"), extra={"source": "test"})
    assert tree(tmp_path / "one") == tree(tmp_path / "two")
    lake.write_frames(frames(), str(tmp_path / "two"))  # again over itself: nothing changes
    lake.write_frames(frames(), str(tmp_path / "two"), extra={"source": "test"})
    assert tree(tmp_path / "one") == tree(tmp_path / "two")
    # The cluster writes the same bytes as one process does, for the same partitions.
    lake.write_dask(dd.from_pandas(pd.concat(frames(), ignore_index=True), npartitions=3), str(tmp_path / "dask"),
                    dask_client, extra={"source": "test"})
    assert tree(tmp_path / "dask") == tree(tmp_path / "one")
    # Different data: different bytes, and a different name for the part that changed only.
    changed = frames()
    changed[1].loc[0, "b"] = 7.0
    lake.write_frames(changed, str(tmp_path / "other"), extra={"source": "test"})
    one, other = tree(tmp_path / "one"), tree(tmp_path / "other")
    assert one[lake.MANIFEST] != other[lake.MANIFEST]
    assert sorted(set(one) ^ set(other)) == sorted([listed(str(tmp_path / "one"))[1],
                                                   listed(str(tmp_path / "other"))[1]])


def test_no_manifest_means_no_dataset(tmp_path):
    (tmp_path / "ds" / "parts").mkdir(parents=True)
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "ds" / "parts" / "part-00000-0123456789abcdef.parquet")
    with pytest.raises(lake.LakeError, match=r"no committed dataset at .*_manifest.json is missing"):
        lake.read_pandas(str(tmp_path / "ds"))


def test_verify_names_a_part_that_changed(tmp_path):
    target = str(tmp_path / "ds")
    manifest = lake.write_frames(frames(2), target)
    changed = tmp_path / "ds" / manifest["parts"][1]["path"]
    pd.DataFrame({"a": [0], "b": [0.0]}).to_parquet(changed, index=False)
    with pytest.raises(lake.LakeError, match=r"part-00001-[0-9a-f]{16}\.parquet does not match"):
        lake.verify(target)


def test_an_unknown_manifest_format_is_refused(tmp_path):
    target = tmp_path / "ds"
    lake.write_frames(frames(1), str(target))
    manifest = json.loads((target / lake.MANIFEST).read_text())
    (target / lake.MANIFEST).write_text(json.dumps({**manifest, "format": "other/9"}))
    with pytest.raises(lake.LakeError, match="format 'other/9'"):
        lake.read_manifest(str(target))


def test_dask_partitions_are_written_by_the_workers_and_committed(tmp_path, dask_client):
    import dask.dataframe as dd

    source = pd.concat(frames(4), ignore_index=True)
    target = str(tmp_path / "ds")
    manifest = lake.write_dask(dd.from_pandas(source, npartitions=4), target, dask_client)
    assert [part["rows"] for part in manifest["parts"]] == [50, 50, 50, 50]
    pd.testing.assert_frame_equal(lake.read_dask(target).compute().reset_index(drop=True), source)
    lake.verify(target)


def _bad_first_partition(part: pd.DataFrame, partition_info: dict | None = None) -> pd.DataFrame:
    """Partition 0 fails at once; the others are still being computed and written when it does."""
    if partition_info is not None and partition_info["number"] == 0:
        raise ValueError("partition 0 is bad")
    time.sleep(0.2)
    return part


def test_a_failed_dask_write_commits_nothing_and_leaves_none_of_its_parts(tmp_path, dask_client):
    import dask.dataframe as dd

    target = str(tmp_path / "ds")
    lake.write_frames(frames(2), target)
    before = lake.read_pandas(target)
    source = dd.from_pandas(pd.concat(frames(4), ignore_index=True), npartitions=4)
    with pytest.raises(ValueError, match="partition 0 is bad"):
        lake.write_dask(source.map_partitions(_bad_first_partition, meta=source._meta), target, dask_client)
    pd.testing.assert_frame_equal(lake.read_pandas(target), before)
    assert part_files(tmp_path / "ds") == listed(target)  # the parts the other tasks wrote were removed


def test_s3_round_trip_with_checksums(s3_env):
    target = f"s3://{s3_env.bucket}/lake-test/ds"
    options = lake.storage_options(target, s3_env.endpoint_url)
    manifest = lake.write_frames(frames(2), target, options=options)
    assert lake.verify(target, options) == manifest
    pd.testing.assert_frame_equal(lake.read_pandas(target, options), pd.concat(frames(2), ignore_index=True))
    with pytest.raises(lake.LakeError, match="no committed dataset"):
        lake.read_manifest(f"s3://{s3_env.bucket}/lake-test/nothing-here", options)
