"""``ccfraud score``: the API's scorer and schema, partition by partition on a real Dask cluster.

Parity is bit for bit: every output partition's probabilities equal what the API answers
for the same rows sent as one batch (the scorer's BLAS kernels may round a row's last bit
differently in batches of other sizes, so "the same rows" means the same batch). Faults
are real: a worker process is killed with SIGKILL mid-job, a bad cell sits in a block that
other workers are scoring at the same time. No timing is asserted.
"""

from __future__ import annotations

import json
import os
import uuid
from http import HTTPStatus
from pathlib import Path

import dask
import fsspec.core
import numpy as np
import pandas as pd
import pytest
from dask_fixtures import KillOnStart, restore_workers

from ccfraud import artifacts, batch, cli, compute, lake, publish, s3, schema, synthetic
from ccfraud.serving import create_app

#: logreg_model_dir and forest_model_dir, shared with other scoring tests.
pytest_plugins = ["model_fixtures"]

ROOT = Path(__file__).resolve().parents[1]

PROBABILITY, DECISION = batch.PROBABILITY, batch.DECISION


@pytest.fixture(scope="module")
def transactions() -> pd.DataFrame:
    """Labelled rows with frauds among them, so both decisions occur."""
    return synthetic.generate(rows=2400, frauds=120, seed=7)


@pytest.fixture(scope="module")
def apis() -> dict[Path, object]:
    """One API test client per model directory, built as the server builds it."""
    return {}


def api_for(apis: dict, model_dir: Path):
    if model_dir not in apis:
        apis[model_dir] = create_app(str(model_dir), max_rows=10_000, max_body_bytes=20_000_000).test_client()
    return apis[model_dir]


def answered(response) -> pd.DataFrame:
    assert response.status_code == HTTPStatus.OK, response.get_data(as_text=True)
    document = response.get_json()
    frame = pd.DataFrame(document["predictions"])
    frame["model_version"] = document["model_version"]
    return frame


def api_json(api, rows: pd.DataFrame) -> pd.DataFrame:
    """The API's answer for ``rows`` sent as one JSON batch (floats as their shortest exact repr)."""
    instances = [{name: float(value) for name, value in zip(schema.FEATURES, values, strict=True)}
                 for values in rows[schema.FEATURES].to_numpy().tolist()]
    return answered(api.post("/predict", data=json.dumps({"instances": instances}), content_type="application/json"))


def api_csv(api, header: str, lines: list[str]) -> pd.DataFrame:
    """The API's answer for CSV lines sent as one text/csv batch under ``header``."""
    return answered(api.post("/predict", data="\n".join([header, *lines]) + "\n", content_type="text/csv"))


def part_bounds(manifest: dict) -> list[tuple[int, int]]:
    """Each output part's global rows as (start, stop)."""
    stops = np.cumsum([part["rows"] for part in manifest["parts"]]).tolist()
    return list(zip([0, *stops[:-1]], stops, strict=True))


def assert_equal_to_api(output: pd.DataFrame, manifest: dict, answer) -> None:
    """Every part's rows equal ``answer(start, stop)``, the API's answer for the same rows in one batch."""
    assert output[batch.ROW].tolist() == list(range(len(output)))
    for start, stop in part_bounds(manifest):
        expected = answer(start, stop)
        found = output.iloc[start:stop]
        assert np.array_equal(found[PROBABILITY].to_numpy(), expected["fraud_probability"].to_numpy()), (start, stop)
        assert found[DECISION].tolist() == expected["is_fraud"].tolist()
        assert set(found[batch.MODEL_VERSION]) == set(expected["model_version"])


def write_parquet_files(frame: pd.DataFrame, directory: Path, count: int) -> list[pd.DataFrame]:
    """``frame`` as ``count`` Parquet files, named so that only a natural sort puts them in order."""
    directory.mkdir(parents=True, exist_ok=True)
    pieces = np.array_split(np.arange(len(frame)), count)
    for i, rows in enumerate(pieces):
        frame.iloc[rows].to_parquet(directory / f"part.{i}.parquet", index=False)
    return [frame.iloc[rows] for rows in pieces]


def part_files(target: Path) -> list[str]:
    """Every part file under ``target`` (committed or not), relative to it."""
    return sorted(str(p.relative_to(target)) for p in target.rglob("*.parquet")) if target.exists() else []


def listed_parts(target: Path) -> list[str]:
    return sorted(part["path"] for part in lake.read_manifest(str(target))["parts"])


# --- parity with the API -----------------------------------------------------------------------


@pytest.mark.parametrize("model_fixture", ["logreg_model_dir", "forest_model_dir"])
def test_parquet_files_score_exactly_as_the_api(request, model_fixture, transactions, apis, tmp_path, dask_client):
    model_dir = request.getfixturevalue(model_fixture)
    write_parquet_files(transactions, tmp_path / "in", 11)
    result = batch.score(str(model_dir), str(tmp_path / "in"), str(tmp_path / "out"), client=dask_client)

    output = lake.read_pandas(str(tmp_path / "out"))
    assert list(output.columns) == list(batch.OUTPUT_COLUMNS)
    assert result.rows == len(transactions) and result.partitions == 11 and len(result.manifest["parts"]) == 11
    assert lake.verify(str(tmp_path / "out")) == result.manifest
    assert result.manifest["model_version"] == artifacts.load_model(model_dir).version
    # Input order kept across files (part.10 after part.9): the join keys line up.
    assert np.array_equal(output[schema.TIME].to_numpy(), transactions[schema.TIME].to_numpy())
    assert np.array_equal(output[schema.AMOUNT].to_numpy(), transactions[schema.AMOUNT].to_numpy())
    assert output[DECISION].any() and not output[DECISION].all()
    api = api_for(apis, model_dir)
    assert_equal_to_api(output, result.manifest, lambda start, stop: api_json(api, transactions.iloc[start:stop]))


def test_a_csv_file_is_scored_in_blocks_exactly_as_the_api(logreg_model_dir, transactions, apis, tmp_path,
                                                           dask_client):
    text = transactions.to_csv(index=False)
    (tmp_path / "in.csv").write_text(text)
    result = batch.score(str(logreg_model_dir), str(tmp_path / "in.csv"), str(tmp_path / "out"), client=dask_client,
                         csv_block_bytes=len(text) // 5)

    output = lake.read_pandas(str(tmp_path / "out"))
    assert result.partitions >= 5 and len(output) == len(transactions)
    assert np.array_equal(output[schema.TIME].to_numpy(), transactions[schema.TIME].to_numpy())
    header, *lines = text.splitlines()
    api = api_for(apis, logreg_model_dir)
    assert_equal_to_api(output, result.manifest, lambda start, stop: api_csv(api, header, lines[start:stop]))


def test_a_lake_dataset_is_read_by_its_manifest(logreg_model_dir, transactions, apis, tmp_path, dask_client):
    pieces = [transactions.iloc[i : i + 600] for i in range(0, len(transactions), 600)]
    source = str(tmp_path / "in")
    lake.write_frames(pieces, source)
    (tmp_path / "in" / "stray.parquet").write_bytes(b"not listed in the manifest, so never read")
    result = batch.score(str(logreg_model_dir), source, str(tmp_path / "out"), client=dask_client)

    assert [part["rows"] for part in result.manifest["parts"]] == [600] * 4
    api = api_for(apis, logreg_model_dir)
    assert_equal_to_api(lake.read_pandas(str(tmp_path / "out")), result.manifest,
                        lambda start, stop: api_json(api, transactions.iloc[start:stop]))


def test_score_frame_is_the_same_work_in_plain_pandas(logreg_model_dir, transactions):
    """The per-partition function needs no cluster: one partition in pandas equals the API's scorer on it."""
    loaded = artifacts.load_model(logreg_model_dir)
    scorer = batch.Scorer(loaded.model)
    rows = transactions.iloc[100:400]
    scored = batch.score_frame(rows, scorer, threshold=loaded.threshold, model_version=loaded.version, first_row=100)
    expected = scorer.probabilities(rows[schema.FEATURES].to_numpy())
    assert np.array_equal(scored[PROBABILITY].to_numpy(), expected)
    assert scored[batch.ROW].tolist() == list(range(100, 400))
    assert scored[DECISION].tolist() == (expected >= loaded.threshold).tolist()


# --- bad input: a clear error, nothing committed, nothing left behind --------------------------


def test_a_bad_cell_names_file_column_and_file_row_and_leaves_the_old_scores(logreg_model_dir, transactions,
                                                                             tmp_path, dask_client):
    target = tmp_path / "out"
    write_parquet_files(transactions, tmp_path / "good", 2)
    before = batch.score(str(logreg_model_dir), str(tmp_path / "good"), str(target), client=dask_client).manifest
    text = transactions.to_csv(index=False).splitlines()
    row = 1733  # in a later block, while other blocks are scored at the same time
    cells = text[1 + row].split(",")
    cells[schema.COLUMNS.index("V3")] = "abc"
    text[1 + row] = ",".join(cells)
    (tmp_path / "bad.csv").write_text("\n".join(text) + "\n")

    with pytest.raises(schema.SchemaError) as caught:
        batch.score(str(logreg_model_dir), str(tmp_path / "bad.csv"), str(target), client=dask_client,
                    csv_block_bytes=len("\n".join(text)) // 6)
    message = str(caught.value)
    assert f"{tmp_path / 'bad.csv'} (rows " in message
    assert f"column 'V3': 1 non-numeric value(s), first at row {row}: 'abc'" in message
    assert lake.read_manifest(str(target)) == before  # the previous scores, untouched
    assert part_files(target) == listed_parts(target)  # no stray parts of the failed run


def test_an_interrupt_after_the_last_part_leaves_no_part(logreg_model_dir, transactions, tmp_path, dask_client,
                                                          monkeypatch):
    """Every part is written, then Ctrl-C lands while the worker plugin is unregistered: the parts must go, or the
    next run to this output would find files and no manifest and refuse it."""
    write_parquet_files(transactions, tmp_path / "in", 3)

    def interrupted(self, name):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(dask_client), "unregister_worker_plugin", interrupted)
    with pytest.raises(KeyboardInterrupt):
        batch.score(str(logreg_model_dir), str(tmp_path / "in"), str(tmp_path / "out"), client=dask_client)
    monkeypatch.undo()
    for name in {name for names in dask_client.run(lambda dask_worker: list(dask_worker.plugins)).values()
                 for name in names if name.startswith("ccfraud-scorer-")}:
        dask_client.unregister_worker_plugin(name)  # the one the interrupt left registered
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").rglob("*.parquet")) == []
    result = batch.score(str(logreg_model_dir), str(tmp_path / "in"), str(tmp_path / "out"), client=dask_client)
    assert result.rows == len(transactions)


def test_a_missing_column_fails_before_anything_is_scored(logreg_model_dir, transactions, tmp_path, dask_client):
    write_parquet_files(transactions, tmp_path / "in", 3)
    transactions.iloc[:10].drop(columns=["V7"]).to_parquet(tmp_path / "in" / "part.3.parquet", index=False)
    with pytest.raises(schema.SchemaError, match=r"part\.3\.parquet: missing column\(s\) \['V7'\]"):
        batch.score(str(logreg_model_dir), str(tmp_path / "in"), str(tmp_path / "out"), client=dask_client)
    assert not (tmp_path / "out").exists()


def test_a_missing_value_in_parquet_names_its_file_and_row(logreg_model_dir, transactions, tmp_path, dask_client):
    files = write_parquet_files(transactions, tmp_path / "in", 4)
    broken = files[2].copy()
    broken.iloc[17, schema.COLUMNS.index(schema.AMOUNT)] = np.nan
    broken.to_parquet(tmp_path / "in" / "part.2.parquet", index=False)
    pattern = r"part\.2\.parquet: column 'Amount': 1 missing or infinite value\(s\), first at row 17: nan"
    with pytest.raises(schema.SchemaError, match=pattern):
        batch.score(str(logreg_model_dir), str(tmp_path / "in"), str(tmp_path / "out"), client=dask_client)
    assert part_files(tmp_path / "out") == [] and not (tmp_path / "out" / lake.MANIFEST).exists()


def test_a_part_changed_after_its_commit_is_refused(logreg_model_dir, transactions, tmp_path, dask_client):
    manifest = lake.write_frames([transactions.iloc[:500], transactions.iloc[500:1000]], str(tmp_path / "in"))
    transactions.iloc[:400].to_parquet(tmp_path / "in" / manifest["parts"][1]["path"], index=False)
    with pytest.raises(batch.BatchError,
                       match=r"part-00001-[0-9a-f]{16}\.parquet: .* but the dataset.s _manifest\.json lists"):
        batch.score(str(logreg_model_dir), str(tmp_path / "in"), str(tmp_path / "out"), client=dask_client)
    assert not (tmp_path / "out" / lake.MANIFEST).exists()


def test_locations_that_cannot_work_are_refused_with_the_reason(logreg_model_dir, transactions, tmp_path,
                                                                dask_client):
    model = str(logreg_model_dir)
    write_parquet_files(transactions.iloc[:100], tmp_path / "in", 1)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "half" / "run-x").mkdir(parents=True)
    transactions.iloc[:5].to_parquet(tmp_path / "half" / "run-x" / "part-00000.parquet")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("precious")
    cases = [
        (tmp_path / "nowhere", tmp_path / "o1", r"input .*nowhere not found"),
        (tmp_path / "notes.txt", tmp_path / "o2", r"expected a \.csv or \.parquet file"),
        (tmp_path / "half", tmp_path / "o3", r"holds lake parts \(run-x/part-00000\.parquet\) but no _manifest\.json"),
        (tmp_path / "in", tmp_path / "in" / "scores", r"overlap"),
        (tmp_path / "in", tmp_path / "home", r"home holds files but no _manifest\.json"),
        (tmp_path / "in", "gs://bucket/scores", r"unsupported scheme 'gs'"),
    ]
    for source, target, pattern in cases:
        with pytest.raises(batch.BatchError, match=pattern):
            batch.score(model, str(source), str(target), client=dask_client)
    assert (tmp_path / "home" / "thesis.tex").read_text() == "precious"


def test_credentials_in_an_s3_uri_are_refused_without_echoing_them():
    with pytest.raises(batch.BatchError) as caught:
        batch.check_location("s3://AKIAEXAMPLE:s3cr3t@bucket/in.csv", "input")
    assert "s3cr3t" not in str(caught.value) and "must not embed credentials" in str(caught.value)


def test_the_worker_plugin_ships_the_model_not_a_scorer_and_checks_library_versions(logreg_model_dir):
    import pickle

    loaded = artifacts.load_model(logreg_model_dir)
    plugin = batch.ScorerPlugin(loaded, artifacts.library_versions(), name="p")
    assert plugin.scorer() is plugin.scorer()  # built once per process
    shipped = pickle.loads(pickle.dumps(plugin))
    assert shipped._scorer is None and shipped.loaded.version == loaded.version
    other = batch.ScorerPlugin(loaded, {**artifacts.library_versions(), "scikit-learn": "0.0"}, name="q")
    with pytest.raises(artifacts.ArtifactError, match=r"other library versions than the client: scikit-learn "):
        other.scorer()


# --- a worker killed mid-job ------------------------------------------------------------------


def test_a_worker_killed_mid_job_changes_nothing_in_the_output(logreg_model_dir, transactions, tmp_path,
                                                               dask_client):
    """Distributed reruns the lost task; it writes the same bytes, so the dataset equals a clean run's.

    The worker dies the moment partition 2 of 6 starts executing on it (a worker plugin kills
    its own process on that transition): mid-job and mid-task by construction, not by timing.
    """
    files = 6
    write_parquet_files(transactions, tmp_path / "in", files)
    model = artifacts.load_model(logreg_model_dir)
    clean = batch.score(model, str(tmp_path / "in"), str(tmp_path / "clean"), client=dask_client)

    marker = str(tmp_path / "killed")
    pids = set(dask_client.run(os.getpid).values())
    dask_client.register_plugin(KillOnStart("-00002", marker))
    try:
        result = batch.score(model, str(tmp_path / "in"), str(tmp_path / "hurt"), client=dask_client)
    finally:
        dask_client.unregister_worker_plugin(KillOnStart.name)
        restore_workers(dask_client)
    killed = KillOnStart.killed_pid(marker)
    assert killed in pids, "a worker of the cluster was killed while scoring partition 2"
    assert killed not in dask_client.run(os.getpid).values()  # it really died; its nanny started a new one
    assert result.manifest == clean.manifest  # same parts, names, rows and checksums: content-addressed
    lake.verify(str(tmp_path / "hurt"))
    assert part_files(tmp_path / "hurt") == listed_parts(tmp_path / "hurt")  # no stray part of the lost task
    pd.testing.assert_frame_equal(lake.read_pandas(str(tmp_path / "hurt")), lake.read_pandas(str(tmp_path / "clean")))


def test_a_partition_that_keeps_killing_its_workers_is_an_error_naming_it():
    """What the scheduler raises after allowed-failures worker deaths on one task, as the job reports it."""
    from distributed.scheduler import KilledWorker

    key = "ccfraud-score-run-x-00003"
    error = batch._explain(KilledWorker(key, None, 3), {key: "s3://bucket/in/big.csv (rows 600000-799999)"})
    assert isinstance(error, batch.BatchError)
    assert str(error).startswith("s3://bucket/in/big.csv (rows 600000-799999): the Dask workers running it died 4 "
                                 "time(s) in a row")
    other = ValueError("not a worker death")
    assert batch._explain(other, {}) is other


# --- the command line ------------------------------------------------------------------------


@pytest.fixture
def on_session_cluster(dask_client):
    """The CLI finds the cluster as users' commands do: through Dask's configuration."""
    with dask.config.set({"scheduler-address": dask_client.scheduler.address}):
        yield dask_client


def test_cli_scores_prints_progress_and_the_output_location(logreg_model_dir, transactions, tmp_path, capsys,
                                                            on_session_cluster):
    write_parquet_files(transactions, tmp_path / "in", 3)
    assert cli.main(["score", str(logreg_model_dir), str(tmp_path / "in"), str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"{tmp_path / 'out'}\n"
    assert "[ccfraud] scoring 2,400 rows in 3 partition(s) of 3 file(s)" in captured.err
    assert "[ccfraud] scored 3 of 3 partitions (2,400 of 2,400 rows)" in captured.err
    assert f"[ccfraud] committed 2,400 scored rows to {tmp_path / 'out'}" in captured.err
    assert len(lake.read_pandas(str(tmp_path / "out"))) == len(transactions)


def test_cli_bad_input_exits_1_with_the_error(logreg_model_dir, transactions, tmp_path, capsys, on_session_cluster):
    broken = transactions.iloc[:50].copy()
    broken["V2"] = broken["V2"].map(repr)  # numbers as text are accepted, as in a CSV file; "n/a" is not
    broken.iloc[5, schema.COLUMNS.index("V2")] = "n/a"
    broken.to_parquet(tmp_path / "in.parquet", index=False)
    with pytest.raises(SystemExit) as caught:
        cli.main(["score", str(logreg_model_dir), str(tmp_path / "in.parquet"), str(tmp_path / "out")])
    assert caught.value.code == f"error: {tmp_path / 'in.parquet'}: column 'V2': 1 non-numeric value(s), first at " \
                                "row 5: 'n/a'"
    assert capsys.readouterr().out == ""
    assert not (tmp_path / "out" / lake.MANIFEST).exists()


def test_cli_model_that_does_not_verify_exits_1(transactions, tmp_path, on_session_cluster):
    write_parquet_files(transactions.iloc[:10], tmp_path / "in", 1)
    with pytest.raises(SystemExit) as caught:
        cli.main(["score", str(tmp_path / "no-model"), str(tmp_path / "in"), str(tmp_path / "out")])
    assert str(caught.value.code).startswith("error: ") and "model.json not found" in str(caught.value.code)


def test_cli_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["score", "models"])
    assert caught.value.code == 2
    assert "the following arguments are required: INPUT, OUTPUT" in capsys.readouterr().err


# --- on a real S3 server ----------------------------------------------------------------------


@pytest.fixture
def s3_cluster(s3_env, monkeypatch):
    """A one-worker local cluster from compute.dask_client, started with the test server's credentials in the
    environment (the worker inherits them) and no endpoint: only ``--endpoint-url`` says where the store is."""
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    with dask.config.set({"scheduler-address": None}), compute.dask_client(n_workers=1, memory_limit="1GiB") as client:
        yield client


@pytest.mark.s3
def test_s3_model_csv_parquet_and_lake_inputs_to_s3_output(s3_env, s3_cluster, logreg_model_dir, transactions,
                                                           apis, tmp_path, capsys):
    endpoint = s3_env.endpoint_url
    base = f"s3://{s3_env.bucket}/batch-{uuid.uuid4().hex[:8]}"
    model_uri = publish.publish_model(logreg_model_dir, f"{base}/models/", endpoint_url=endpoint)
    text = transactions.to_csv(index=False)
    (tmp_path / "in.csv").write_text(text)
    s3.upload(tmp_path / "in.csv", f"{base}/in/transactions.csv", endpoint_url=endpoint, progress=False)
    write_parquet_files(transactions, tmp_path / "pq", 3)
    for i in range(3):
        s3.upload(tmp_path / "pq" / f"part.{i}.parquet", f"{base}/pq/part.{i}.parquet", endpoint_url=endpoint,
                  progress=False)
    options = lake.storage_options(base, endpoint)
    lake.write_frames([transactions.iloc[:1200], transactions.iloc[1200:]], f"{base}/lake", options=options)
    api = api_for(apis, logreg_model_dir)
    by_json = lambda start, stop: api_json(api, transactions.iloc[start:stop])  # noqa: E731

    with dask.config.set({"scheduler-address": s3_cluster.scheduler.address}):
        code = cli.main(["score", model_uri, f"{base}/in/transactions.csv", f"{base}/scores-csv",
                         "--endpoint-url", endpoint])
    assert code == 0 and capsys.readouterr().out == f"{base}/scores-csv\n"
    manifest = lake.verify(f"{base}/scores-csv", options)
    header, *lines = text.splitlines()
    assert_equal_to_api(lake.read_pandas(f"{base}/scores-csv", options), manifest,
                        lambda start, stop: api_csv(api, header, lines[start:stop]))

    for source in (f"{base}/pq/", f"{base}/lake"):
        result = batch.score(model_uri, source, f"{base}/scores", endpoint_url=endpoint, client=s3_cluster)
        assert lake.verify(f"{base}/scores", options) == result.manifest
        assert_equal_to_api(lake.read_pandas(f"{base}/scores", options), result.manifest, by_json)
    assert "AWS_ENDPOINT_URL" not in os.environ  # the endpoint reaches the model loader as an argument
    with pytest.raises(batch.BatchError, match=rf"input {base}/nothing/: no .csv or .parquet files in it"):
        batch.score(model_uri, f"{base}/nothing/", f"{base}/scores-none", endpoint_url=endpoint, client=s3_cluster)
    fs, root = fsspec.core.url_to_fs(f"{base}/scores", **options)
    fs.invalidate_cache()
    objects = sorted(name[len(root) + 1:] for name in fs.find(root))  # objects, not SeaweedFS's empty "directories"
    assert objects == [lake.MANIFEST, *(part["path"] for part in result.manifest["parts"])]  # the first run's went


def test_forest_fixture_is_a_forest(forest_model_dir):
    """The forest parity case exercises the forest kernel on the workers, not a fallback."""
    scorer = batch.Scorer(artifacts.load_model(forest_model_dir).model)
    assert scorer.classifier_path == "binary_forest"


def test_the_benchmark_reports_rate_and_memory_of_each_worker_and_the_client(logreg_model_dir, transactions,
                                                                            tmp_path, dask_client):
    """The figures are the benchmark's to print; here only that it measures what it says, on a small input."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("batch_benchmark", ROOT / "benchmarks" / "batch_scoring.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    write_parquet_files(transactions, tmp_path / "in", 2)
    figures = bench.run(dask_client, logreg_model_dir, str(tmp_path / "in"), str(tmp_path / "out"), sample_seconds=0.05)
    assert figures["rows"] == len(transactions) and figures["partitions"] == 2 and figures["rows_per_second"] > 0
    assert set(figures["workers"]) == set(dask_client.scheduler_info()["workers"])
    # The high-water mark is at least every sample, within a MiB: each figure is rounded to MiB from RSS
    # counters the kernel keeps per CPU and sums approximately, read at different moments.
    assert all(memory["sampled_peak_mib"] > 0 and memory["high_water_mib"] >= memory["sampled_peak_mib"] - 1
               for memory in figures["workers"].values())
    assert figures["client"]["high_water_mib"] >= figures["client"]["sampled_peak_mib"] - 1
    assert figures["client"]["sampled_peak_mib"] > 0
