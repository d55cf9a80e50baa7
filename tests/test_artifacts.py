"""A model artifact carries its metadata and refuses to load when tampered with."""

import json

import numpy as np
import pytest

from ccfraud import artifacts, modeling, schema, synthetic


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = synthetic.generate(rows=3000, frauds=60, seed=4)
    model = modeling.make_pipeline("logreg", "class_weight").fit(data, data[schema.TARGET])
    out = tmp_path_factory.mktemp("model")
    meta = artifacts.save_model(model, out, threshold=0.3, extra={"metrics": {"test": {"auprc": 0.5}}})
    return model, out, meta, data


def test_roundtrip_gives_identical_probabilities(trained):
    model, out, meta, data = trained
    loaded = artifacts.load_model(out)
    assert loaded.threshold == 0.3
    assert loaded.version == meta["model_version"] == artifacts.behaviour_fingerprint(model)[:12]
    np.testing.assert_array_equal(modeling.fraud_probability(loaded.model, data),
                                  modeling.fraud_probability(model, data))


def test_metadata_says_what_the_model_needs(trained):
    _, out, _, _ = trained
    meta = json.loads((out / artifacts.METADATA_FILE).read_text())
    assert meta["features"] == schema.FEATURES
    assert set(artifacts.PINNED_LIBRARIES) <= set(meta["library_versions"])
    assert meta["metrics"]["test"]["auprc"] == 0.5
    assert meta["git_revision"]


def copy_of(out, tmp_path):
    target = tmp_path / "copy"
    target.mkdir()
    for name in (artifacts.MODEL_FILE, artifacts.METADATA_FILE):
        (target / name).write_bytes((out / name).read_bytes())
    return target


def test_tampered_model_is_refused(trained, tmp_path):
    _, out, _, _ = trained
    target = copy_of(out, tmp_path)
    data = bytearray((target / artifacts.MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (target / artifacts.MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(artifacts.ArtifactError, match="checksum mismatch"):
        artifacts.load_model(target)


def test_version_mismatch_is_refused(trained, tmp_path):
    _, out, _, _ = trained
    target = copy_of(out, tmp_path)
    meta = json.loads((target / artifacts.METADATA_FILE).read_text())
    meta["library_versions"]["scikit-learn"] = "0.24.2"
    (target / artifacts.METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(artifacts.ArtifactError, match=r"scikit-learn 0.24.2 \(installed: "):
        artifacts.load_model(target)


def test_missing_artifact_is_named(tmp_path):
    with pytest.raises(artifacts.ArtifactError, match="model.json not found"):
        artifacts.load_model(tmp_path)


def test_threshold_must_be_a_probability(trained, tmp_path):
    model, _, _, _ = trained
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\)"):
        artifacts.save_model(model, tmp_path, threshold=1.0)
    assert not (tmp_path / artifacts.MODEL_FILE).exists()


def test_version_follows_behaviour_not_file_bytes(trained, tmp_path):
    """Saving the same model twice gives the same version; a different model gets another."""
    model, out, meta, data = trained
    again = artifacts.save_model(model, tmp_path / "again", threshold=0.3)
    assert again["model_version"] == meta["model_version"]
    other = modeling.make_pipeline("logreg", "none").fit(data, data[schema.TARGET])
    assert artifacts.save_model(other, tmp_path / "other", threshold=0.3)["model_version"] != meta["model_version"]
