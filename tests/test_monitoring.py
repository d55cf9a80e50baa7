"""Monitoring: the statistics against hand-computed values, the monitor on fresh and shifted data, bad input
with the download stage's errors, and the command's exit codes.

The reference is real and small: synthetic splits written as the eda_preprocess stage writes them and a
logistic regression trained on them (``monitoring.write_demo_reference``), built once for the module.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from ccfraud import cli, ingest, monitoring, schema, sources, synthetic
from ccfraud.monitoring import Binning, FeatureSummary, Rules
from ccfraud.serving import model_source

ROOT = Path(__file__).resolve().parents[1]
FRESH = "synthetic://?rows=20000&frauds=200&seed=7"


# ---------------------------------------------------------------------------------------
# The statistics, by hand
# ---------------------------------------------------------------------------------------


def test_psi_by_hand():
    # shares p = (0.5, 0.5), q = (0.25, 0.75): (0.25 - 0.5) ln(0.25/0.5) + (0.75 - 0.5) ln(0.75/0.5)
    assert monitoring.psi([50, 50], [25, 75]) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5))
    assert monitoring.psi([50, 50], [25, 75]) == pytest.approx(0.274653, abs=1e-6)
    assert monitoring.psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0, abs=1e-12)  # same shares, any sizes


def test_psi_floors_an_empty_bin_instead_of_infinity():
    # p = (1, 0) floored to (1, 1e-4); q = (0.5, 0.5)
    expected = (0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - 1e-4) * math.log(0.5 / 1e-4)
    assert monitoring.psi([100, 0], [50, 50]) == pytest.approx(expected)
    with pytest.raises(ValueError, match="different bins"):
        monitoring.psi([1, 2], [1, 2, 3])


def test_ks_by_hand():
    # cumulative shares after each bin: reference 0.5, 1.0; new 0.0, 1.0 -> D = 0.5; n*m/(n+m) = 10*10/20 = 5
    statistic, p_value = monitoring.ks_from_counts([5, 5], [0, 10])
    assert statistic == pytest.approx(0.5)
    assert p_value == pytest.approx(stats.kstwo.sf(0.5, 5))
    assert monitoring.ks_from_counts([3, 3, 4], [30, 30, 40]) == pytest.approx((0.0, 1.0))


def test_ks_from_counts_is_scipys_when_every_value_is_an_edge():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 30, 400), rng.integers(3, 33, 300)
    edges = np.unique(np.r_[a, b]).astype("float64")
    statistic, p_value = monitoring.ks_from_counts(monitoring.bin_counts(a, edges), monitoring.bin_counts(b, edges))
    expected = stats.ks_2samp(a, b, method="asymp")
    assert statistic == pytest.approx(expected.statistic, abs=1e-12)
    assert p_value == pytest.approx(expected.pvalue, rel=1e-9)


def test_ks_on_quantile_bins_is_within_one_bin_of_the_exact_statistic():
    rng = np.random.default_rng(1)
    reference, new = rng.normal(0.0, 1.0, 5000), rng.normal(0.15, 1.1, 4000)
    edges = monitoring.quantile_edges(reference, 100)
    counts = monitoring.bin_counts(reference, edges)
    binned, _ = monitoring.ks_from_counts(counts, monitoring.bin_counts(new, edges))
    exact = stats.ks_2samp(reference, new).statistic
    assert binned <= exact + 1e-12
    assert exact <= binned + counts.max() / counts.sum() + 1e-12


def test_quantile_edges_and_bin_counts():
    edges = monitoring.quantile_edges(np.arange(10), 5)
    np.testing.assert_allclose(edges, [1.8, 3.6, 5.4, 7.2])
    np.testing.assert_array_equal(monitoring.bin_counts(np.arange(10), edges), [2, 2, 2, 2, 2])
    # Bins are [edge, next edge); beyond the reference's range is the first or the last bin.
    np.testing.assert_array_equal(monitoring.bin_counts([-100.0, 1.8, 100.0], edges), [1, 1, 0, 0, 1])
    # Repeated values give fewer bins, never empty ones between equal edges.
    np.testing.assert_array_equal(monitoring.quantile_edges([1.0] * 10 + [2.0], 4), [1.0])
    with pytest.raises(ValueError, match="at least 2"):
        monitoring.quantile_edges([1.0, 2.0], 1)


def test_summaries_of_parts_combine_to_the_summary_of_the_whole():
    frame = synthetic.generate(rows=3000, frauds=30, seed=1)
    binning = Binning.of(frame, schema.FEATURES, psi_bins=10, ks_bins=100)
    whole = FeatureSummary.of(frame, binning)
    parts = [FeatureSummary.of(frame.iloc[start:start + 700], binning) for start in range(0, len(frame), 700)]
    combined = functools.reduce(FeatureSummary.combine, parts)
    assert combined.rows == whole.rows == 3000
    for column in schema.FEATURES:
        np.testing.assert_array_equal(combined.psi_counts[column], whole.psi_counts[column])
        np.testing.assert_array_equal(combined.ks_counts[column], whole.ks_counts[column])
    np.testing.assert_allclose(combined.moments.mean, whole.moments.mean, rtol=1e-9, atol=1e-9)


def test_alert_rate_change_by_hand():
    new_rate, reference_rate, ratio, p_value = monitoring.alert_rate_change(30, 1000, 10, 1000)
    assert (new_rate, reference_rate, ratio) == pytest.approx((0.03, 0.01, 3.0))
    assert p_value == pytest.approx(stats.fisher_exact([[30, 970], [10, 990]]).pvalue)
    assert p_value < 0.01
    assert math.isnan(monitoring.alert_rate_change(0, 100, 0, 100)[2])
    assert monitoring.alert_rate_change(1, 100, 0, 100)[2] == math.inf


def test_drift_needs_a_large_psi_or_a_ks_gap_that_is_both_large_and_significant():
    rules = Rules()
    assert rules.drift_reasons(0.01, 0.05, 1e-9) == []  # significant but small: large batches make every gap so
    assert rules.drift_reasons(0.0, 0.2, 0.5) == []  # large but could be chance: small batches do that
    assert rules.drift_reasons(0.3, 0.0, 1.0) == ["PSI 0.300 >= 0.25"]
    assert rules.drift_reasons(0.0, 0.2, 0.001) == ["KS 0.200 >= 0.1 (p 0.001 < 0.01)"]


def test_rules_refuse_what_they_cannot_mean():
    with pytest.raises(monitoring.MonitorError, match=r"psi_alert must be a number .* got -1"):
        Rules(psi_alert=-1)
    with pytest.raises(monitoring.MonitorError, match=r"ignore names \['Tme'\]"):
        Rules(ignore=("Tme",))
    with pytest.raises(monitoring.MonitorError, match=r"unknown key\(s\) \['psi_alarm'\]"):
        Rules.from_params({"psi_alarm": 0.2})


def test_params_yaml_monitor_section_is_valid_and_declared_in_the_notebook():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())["monitor"]
    rules = {key: value for key, value in params.items() if key != "show_code"}
    Rules.from_params(rules)
    notebook = nbformat.read(ROOT / "notebooks" / "monitor.ipynb", as_version=4)
    source = next(c.source for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    declared = {line.split("=", 1)[0].strip() for line in source.splitlines() if "=" in line and line[0].isalpha()}
    passed_by_cli = {"model_dir", "processed_dir", "data", "reports_dir", "endpoint_url", "engine", "partition_rows"}
    assert set(rules) | passed_by_cli <= declared


# ---------------------------------------------------------------------------------------
# The monitor on new data
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(processed_dir, model_dir): small synthetic splits and a logistic regression trained on them."""
    return monitoring.write_demo_reference(tmp_path_factory.mktemp("monitor-reference"))


@pytest.fixture(scope="module")
def loaded(reference):
    return model_source.load(str(reference[1]))


def shifted(seed: int = 8) -> pd.DataFrame:
    """Fresh data with amounts tripled and V14 one unit lower: two features moved, nothing else."""
    frame = synthetic.generate(rows=20000, frauds=200, seed=seed)
    frame[schema.AMOUNT] *= 3.0
    frame["V14"] -= 1.0
    return frame


def alerted(result: monitoring.MonitorResult) -> set[str]:
    return set(result.features.loc[result.features["alert"], "column"])


def test_quiet_on_a_fresh_sample_of_the_same_distribution(reference, loaded):
    result = monitoring.monitor(loaded, FRESH, reference[0], Rules())
    assert result.alerts == [] and result.exit_code == monitoring.EXIT_QUIET
    assert result.report["status"] == "quiet"
    time = result.features.set_index("column").loc[schema.TIME]
    assert time["drifted"] and time["ignored"] and not time["alert"]  # later transactions: moved, not alerted
    assert not result.report["scores"]["alert"] and not result.report["alert_rate"]["alert"]
    performance = result.report["performance"]
    assert performance["judged"] and not any(metric["alert"] for metric in performance["metrics"].values())
    assert result.report["reference"]["features"]["data_check"] == (
        "the train split matches its digest in model.json; the test split matches its digest in model.json")


def test_the_data_check_says_which_splits_it_could_check(reference, loaded):
    """The pipeline's model.json records train and valid (its train stage never opens test): the report says the
    test split, whose scores are the score baseline, went unchecked, instead of "matches"."""
    recorded = loaded.metadata["training_data_sha256"]
    as_the_pipeline = dataclasses.replace(loaded, metadata={
        **loaded.metadata, "training_data_sha256": {"train": recorded["train"], "valid": "not read by the monitor"}})
    result = monitoring.monitor(as_the_pipeline, FRESH, reference[0], Rules())
    assert result.report["reference"]["features"]["data_check"] == (
        "the train split matches its digest in model.json; the test split's digest is not recorded (the train stage "
        "never reads the test split): not checked")


def test_flags_exactly_the_shifted_features(reference, loaded, tmp_path):
    path = tmp_path / "shifted.csv"
    shifted().to_csv(path, index=False)
    result = monitoring.monitor(loaded, str(path), reference[0], Rules())
    assert alerted(result) == {"V14", schema.AMOUNT}
    assert result.exit_code == monitoring.EXIT_ALERT and result.report["status"] == "alert"
    assert sorted(line.split(" drifted")[0] for line in result.alerts) == ["feature Amount", "feature V14"]
    table = result.features.set_index("column")
    assert table.loc["V14", "psi"] > 0.25 and table.loc["V14", "new_mean"] < table.loc["V14", "reference_mean"] - 0.9


def test_flags_a_fraud_wave_by_its_alert_rate(reference, loaded):
    result = monitoring.monitor(loaded, "synthetic://?rows=20000&frauds=1000&seed=5", reference[0], Rules())
    rate = result.report["alert_rate"]
    assert rate["alert"] and rate["ratio"] > 2.0 and rate["fisher_pvalue"] < 0.01
    assert any(line.startswith("alert rate ") for line in result.alerts)


def test_flags_a_performance_drop_when_the_labels_no_longer_follow_the_features(reference, loaded, tmp_path):
    frame = synthetic.generate(rows=20000, frauds=200, seed=9)
    frame[schema.TARGET] = np.random.default_rng(0).permutation(frame[schema.TARGET].to_numpy())
    path = tmp_path / "relabelled.parquet"
    frame.to_parquet(path)
    result = monitoring.monitor(loaded, str(path), reference[0], Rules())
    assert alerted(result) == set()  # the features did not move; what they mean did
    metrics = result.report["performance"]["metrics"]
    assert metrics["auprc"]["alert"] and metrics["recall"]["alert"]
    assert metrics["auprc"]["reference_source"] == "model.json metrics.test (training time)"
    assert metrics["auprc"]["reference"] == pytest.approx(loaded.metadata["metrics"]["test"]["auprc"])


def test_unlabelled_data_is_monitored_without_performance(reference, loaded, tmp_path):
    path = tmp_path / "unlabelled.parquet"
    synthetic.generate(rows=5000, frauds=50, seed=10)[schema.FEATURES].to_parquet(path)
    result = monitoring.monitor(loaded, str(path), reference[0], Rules())
    assert result.report["performance"] is None and result.report["data"]["labelled"] is False
    assert result.exit_code == monitoring.EXIT_QUIET


def test_the_dask_engine_summarises_the_reference_as_pandas_does(reference, loaded):
    # Dask's local scheduler (no cluster to start): the splits are read and summarised partition by partition.
    rules = Rules()
    in_memory = monitoring.monitor(loaded, FRESH, reference[0], rules)
    on_cluster = monitoring.monitor(loaded, FRESH, reference[0], rules, engine="dask")
    assert on_cluster.report["alerts"] == in_memory.report["alerts"] == []
    columns = ["column", "psi", "ks_statistic", "ks_pvalue", "alert"]
    pd.testing.assert_frame_equal(on_cluster.features[columns], in_memory.features[columns])
    np.testing.assert_allclose(on_cluster.features["reference_mean"], in_memory.features["reference_mean"],
                               rtol=1e-9, atol=1e-12)  # moments combine in another order: equal to rounding
    assert on_cluster.report["scores"] == in_memory.report["scores"]


def test_a_reference_that_is_not_the_models_is_refused(reference, loaded, tmp_path):
    other, _ = monitoring.write_demo_reference(tmp_path, seed=1)
    with pytest.raises(monitoring.MonitorError, match=r"not the data model .* was trained and tested on"):
        monitoring.monitor(loaded, FRESH, other, Rules())


# ---------------------------------------------------------------------------------------
# Bad input: the download stage's errors
# ---------------------------------------------------------------------------------------


def _bad_file(tmp_path: Path, case: str) -> Path:
    frame = synthetic.generate(rows=300, frauds=5, seed=2)
    path = tmp_path / f"{case}.csv"
    if case == "missing_column":
        frame = frame.drop(columns="V3")
    elif case == "non_numeric":
        frame["V3"] = frame["V3"].astype(object)
        frame.loc[5, "V3"] = "abc"
    if case == "extra_field":  # a trailing comma on every row: pandas would take Time for the index
        path.write_text(frame.to_csv(index=False).replace("\n", ",\n").replace(",\n", "\n", 1))
    elif case != "missing_file":
        frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("case", ["missing_file", "missing_column", "non_numeric", "extra_field"])
def test_bad_input_gets_the_download_stages_error(tmp_path, case):
    path = _bad_file(tmp_path, case)
    with pytest.raises((sources.SourceError, schema.SchemaError)) as download:
        ingest.download(str(path), str(tmp_path / "raw"))
    with pytest.raises(type(download.value)) as monitored:
        list(monitoring.read_partitions(str(path)))
    assert isinstance(monitored.value, monitoring.BAD_INPUT_ERRORS)
    if case == "missing_column":  # the same problem; the expected columns differ only by the optional Class
        assert str(monitored.value).split("; expected")[0] == str(download.value).split("; expected")[0] \
            == f"{path}: missing column(s) ['V3']"
    else:
        assert str(monitored.value) == str(download.value)
    if case == "extra_field":
        assert str(download.value) == (f"{path}: the rows have one field more than the header's 31 names (a trailing "
                                       "comma, or a column without a name?): read as it is, every column would "
                                       "shift by one")
    if case == "non_numeric":
        assert "column 'V3': 1 non-numeric value(s), first at row 5: 'abc'" in str(monitored.value)


# ---------------------------------------------------------------------------------------
# The command: notebook, reports and exit codes
# ---------------------------------------------------------------------------------------


def run_cli(monkeypatch, *arguments: str) -> int:
    monkeypatch.chdir(ROOT)  # the command runs from the repository root, as `ccfraud stage` does
    return cli.main(["monitor", *arguments])


def test_command_exits_with_the_alert_code_and_names_the_drifted_features(reference, tmp_path, monkeypatch, capsys):
    data = tmp_path / "shifted.parquet"
    shifted().to_parquet(data)
    reports = tmp_path / "reports"
    code = run_cli(monkeypatch, "--model", str(reference[1]), "--processed", str(reference[0]), "--data", str(data),
                   "--reports", str(reports))
    assert code == monitoring.EXIT_ALERT
    out = capsys.readouterr().out.splitlines()
    assert sorted(line.split(" drifted")[0] for line in out) == ["ALERT feature Amount", "ALERT feature V14"]
    report = monitoring.read_report(reports)
    assert report["status"] == "alert" and report["exit_code"] == code
    assert report["model"]["location"] == str(reference[1])
    html = (reports / "monitor.html").read_text()
    assert "ALERT: 2 rule(s) fired" in html and "monitoring.monitor(" not in html  # the report, code hidden
    assert not (reports / "monitor.failed.ipynb").exists()


def test_command_exits_with_the_bad_input_code_and_the_download_stages_message(reference, tmp_path, monkeypatch,
                                                                                capsys):
    data = _bad_file(tmp_path, "missing_column")
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / monitoring.REPORT_FILE).write_text('{"status": "quiet"}')  # yesterday's verdict
    code = run_cli(monkeypatch, "--model", str(reference[1]), "--processed", str(reference[0]), "--data", str(data),
                   "--reports", str(reports))
    assert code == monitoring.EXIT_BAD_INPUT
    assert f"error: {data}: missing column(s) ['V3']" in capsys.readouterr().err
    assert not (reports / monitoring.REPORT_FILE).exists() and not (reports / "monitor.html").exists()


@pytest.mark.parametrize(("model", "data"), [("models", "https://user:hunter2@example.invalid/new.csv"),
                                             ("s3://KEY:hunter2@bucket/models/v1/", "new.csv")])
def test_command_refuses_credentials_in_the_data_or_model_uri_before_recording_anything(model, data, tmp_path,
                                                                                       monkeypatch, capsys):
    reports = tmp_path / "reports"
    code = run_cli(monkeypatch, "--model", model, "--data", data, "--reports", str(reports))
    assert code == monitoring.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "carries credentials" in err and "hunter2" not in err
    assert not reports.exists()
