"""A model artifact carries its metadata and refuses to load when tampered with, signed by
another key, or holding any type our pipelines do not contain."""

import copy
import json
import logging
from http import HTTPStatus

import numpy as np
import pytest
import skops.io as sio
from sklearn.naive_bayes import GaussianNB
from sklearn.pipeline import Pipeline as SklearnPipeline

from ccfraud import artifacts, modeling, preprocess, schema, synthetic

KEY = "test-signing-key-" + "0123456789abcdef" * 3
OTHER_KEY = "another-signing-key-" + "fedcba9876543210" * 3


@pytest.fixture(autouse=True)
def no_signing_key(monkeypatch):
    """Each test starts without a key (whatever the developer's shell holds) and sets one if it needs it."""
    monkeypatch.delenv(artifacts.SIGNING_KEY_ENV, raising=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = synthetic.generate(rows=3000, frauds=60, seed=4)
    model = modeling.make_pipeline("logreg", "class_weight").fit(data, data[schema.TARGET])
    out = tmp_path_factory.mktemp("model")
    with pytest.MonkeyPatch.context() as env:
        env.delenv(artifacts.SIGNING_KEY_ENV, raising=False)
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


def test_a_save_that_fails_before_its_last_byte_is_computed_leaves_the_model_directory_as_it_was(trained, tmp_path,
                                                                                                 monkeypatch):
    """The fingerprint and git run after the model is serialised: failing there (or Ctrl-C) must not leave new
    files beside the old model.json, which would then refuse the old model and the new one alike."""
    model, _, _, data = trained
    out = tmp_path / "models"
    artifacts.save_model(model, out, threshold=0.3)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = modeling.make_pipeline("logreg", "none").fit(data, data[schema.TARGET])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(artifacts, "git_revision", interrupted)
    with pytest.raises(KeyboardInterrupt):
        artifacts.save_model(other, out, threshold=0.4)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    monkeypatch.undo()
    assert artifacts.load_model(out).version == artifacts.behaviour_fingerprint(model)[:12]


def test_version_follows_behaviour_not_file_bytes(trained, tmp_path):
    """Saving the same model twice gives the same version; a different model gets another."""
    model, out, meta, data = trained
    again = artifacts.save_model(model, tmp_path / "again", threshold=0.3)
    assert again["model_version"] == meta["model_version"]
    other = modeling.make_pipeline("logreg", "none").fit(data, data[schema.TARGET])
    assert artifacts.save_model(other, tmp_path / "other", threshold=0.3)["model_version"] != meta["model_version"]


# --- the type allowlist ------------------------------------------------------------------------

#: Small versions of each family (types do not depend on size); hist_gb stops early as the
#: train stage's does on the full data (early_stopping="auto" turns it on above 10,000 rows).
SMALL = {"random_forest": {"n_estimators": 5}, "hist_gb": {"max_iter": 10, "early_stopping": True}}
CANDIDATES = [(model, sampler) for model in modeling.MODELS for sampler in modeling.SAMPLERS]


@pytest.fixture(scope="module")
def candidate_models(tmp_path_factory):
    """One saved model of every candidate family with every sampler the code knows."""
    data = synthetic.generate(rows=2000, frauds=40, seed=3)
    saved = {}
    with pytest.MonkeyPatch.context() as env:
        env.delenv(artifacts.SIGNING_KEY_ENV, raising=False)
        for model_name, sampler in CANDIDATES:
            model = modeling.make_pipeline(model_name, sampler, sampling_ratio=0.2, **SMALL.get(model_name, {}))
            model.fit(data[schema.FEATURES], data[schema.TARGET])
            out = tmp_path_factory.mktemp(f"{model_name}-{sampler}")
            artifacts.save_model(model, out, threshold=0.5)
            saved[model_name, sampler] = (model, out)
    return saved, data


@pytest.mark.parametrize("model_name, sampler", CANDIDATES)
def test_a_model_of_every_candidate_loads(candidate_models, model_name, sampler):
    saved, data = candidate_models
    model, out = saved[model_name, sampler]
    loaded = artifacts.load_model(out)
    np.testing.assert_array_equal(modeling.fraud_probability(loaded.model, data),
                                  modeling.fraud_probability(model, data))


def test_allowlist_is_exactly_what_the_candidates_contain(candidate_models):
    """A candidate, sampler or library version that brings a new type fails here, and so does a stale entry."""
    saved, _ = candidate_models
    found = {}
    for key, (_, out) in saved.items():
        for name in artifacts.skops_types((out / artifacts.MODEL_FILE).read_bytes(), out):
            found.setdefault(name, key)
    missing = {name: key for name, key in found.items() if name not in artifacts.ALLOWED_TYPES}
    assert not missing, f"types saved by these candidates are not in artifacts.ALLOWED_TYPES: {missing}"
    assert set(found) == artifacts.ALLOWED_TYPES, f"never used: {sorted(artifacts.ALLOWED_TYPES - set(found))}"


def test_the_allowlist_covers_what_skops_itself_distrusts(candidate_models):
    saved, _ = candidate_models
    untrusted = {name for _, out in saved.values() for name in sio.get_untrusted_types(file=out / artifacts.MODEL_FILE)}
    assert {"ccfraud.modeling.PriorCorrected", "sklearn.tree._tree.Tree",
            "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"} <= untrusted
    assert untrusted <= artifacts.ALLOWED_TYPES


class Canary:
    """A type no model of ours contains; it records every instance made (skops makes them with ``__new__``)."""

    built: list["Canary"] = []

    def __new__(cls):
        instance = super().__new__(cls)
        Canary.built.append(instance)
        return instance


def test_a_file_with_a_foreign_type_is_refused_before_anything_is_built(trained, tmp_path):
    model, _, _, _ = trained
    smuggled = copy.deepcopy(model)
    smuggled.note_ = Canary()
    artifacts.save_model(smuggled, tmp_path, threshold=0.3)  # checksum and metadata consistent, as a writer makes them
    Canary.built.clear()
    with pytest.raises(artifacts.ArtifactError) as error:
        artifacts.load_model(tmp_path)
    assert f"types outside ccfraud.artifacts.ALLOWED_TYPES: {Canary.__module__}.Canary;" in str(error.value)
    assert str(tmp_path / artifacts.MODEL_FILE) in str(error.value)
    assert Canary.built == []
    # What the old load did (trust every type the file lists) builds it:
    sio.load(tmp_path / artifacts.MODEL_FILE, trusted=sio.get_untrusted_types(file=tmp_path / artifacts.MODEL_FILE))
    assert len(Canary.built) == 1


def test_a_type_skops_trusts_is_still_refused_when_it_is_not_ours(monkeypatch, tmp_path):
    """skops trusts every scikit-learn estimator by default; a signed file carrying one we never train is refused."""
    monkeypatch.setenv(artifacts.SIGNING_KEY_ENV, KEY)
    data = synthetic.generate(rows=1000, frauds=30, seed=6)
    # sklearn's Pipeline, not imblearn's: outside the list too.
    steps = [("preprocess", preprocess.make_preprocessor()), ("model", GaussianNB())]
    model = modeling.PriorCorrected(SklearnPipeline(steps)).fit(data[schema.FEATURES], data[schema.TARGET])
    artifacts.save_model(model, tmp_path, threshold=0.5)
    assert "sklearn.naive_bayes.GaussianNB" not in sio.get_untrusted_types(file=tmp_path / artifacts.MODEL_FILE)
    with pytest.raises(artifacts.ArtifactError) as error:
        artifacts.load_model(tmp_path)
    assert str(error.value).startswith(f"{tmp_path / artifacts.MODEL_FILE} contains types outside")
    assert "sklearn.naive_bayes.GaussianNB, sklearn.pipeline.Pipeline;" in str(error.value)


def test_a_model_file_skops_cannot_read_is_refused_by_name(trained, tmp_path):
    _, out, _, _ = trained
    target = copy_of(out, tmp_path)
    (target / artifacts.MODEL_FILE).write_bytes(b"not a zip archive")
    meta = json.loads((target / artifacts.METADATA_FILE).read_text())
    meta["sha256"] = artifacts.file_sha256(target / artifacts.MODEL_FILE)
    (target / artifacts.METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(artifacts.ArtifactError, match=r"model\.skops: not a readable skops file \(BadZipFile"):
        artifacts.load_model(target)


# --- signatures --------------------------------------------------------------------------------

def save_signed(model, out, key=KEY):
    with pytest.MonkeyPatch.context() as env:
        env.setenv(artifacts.SIGNING_KEY_ENV, key)
        return artifacts.save_model(model, out, threshold=0.3)


def test_without_a_key_the_model_is_saved_unsigned(trained):
    _, out, _, _ = trained
    assert artifacts.SIGNATURE_FIELD not in json.loads((out / artifacts.METADATA_FILE).read_text())


def test_a_signed_model_loads_with_its_key(trained, tmp_path, monkeypatch, caplog):
    model, _, _, data = trained
    meta = save_signed(model, tmp_path)
    assert meta[artifacts.SIGNATURE_FIELD]["algorithm"] == "hmac-sha256"
    assert json.loads((tmp_path / artifacts.METADATA_FILE).read_text()) == meta
    monkeypatch.setenv(artifacts.SIGNING_KEY_ENV, KEY)
    with caplog.at_level(logging.DEBUG):
        loaded = artifacts.load_model(tmp_path)
    np.testing.assert_array_equal(modeling.fraud_probability(loaded.model, data),
                                  modeling.fraud_probability(model, data))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert KEY not in caplog.text and KEY not in (tmp_path / artifacts.METADATA_FILE).read_text()


def test_the_signature_survives_rewriting_the_json_but_not_a_changed_value(trained, tmp_path, monkeypatch):
    model, _, _, _ = trained
    meta = save_signed(model, tmp_path)
    monkeypatch.setenv(artifacts.SIGNING_KEY_ENV, KEY)
    path = tmp_path / artifacts.METADATA_FILE
    path.write_text(json.dumps(dict(reversed(list(meta.items())))))  # other key order, no indentation
    artifacts.load_model(tmp_path)
    path.write_text(json.dumps({**meta, "threshold": 0.01}, indent=2))
    with pytest.raises(artifacts.ArtifactError) as error:
        artifacts.load_model(tmp_path)
    assert str(error.value) == (f"{path}: signature does not match {artifacts.SIGNING_KEY_ENV} (the metadata "
                                "was changed after signing, or another key signed it)")


def test_a_tampered_model_and_metadata_pair_is_refused(trained, tmp_path, monkeypatch):
    """A writer of the folder can replace both files consistently; only the key can sign the result."""
    model, _, _, data = trained
    save_signed(model, tmp_path)
    signature = json.loads((tmp_path / artifacts.METADATA_FILE).read_text())[artifacts.SIGNATURE_FIELD]
    other = modeling.make_pipeline("logreg", "none").fit(data, data[schema.TARGET])
    meta = artifacts.save_model(other, tmp_path, threshold=0.3)  # no key: consistent but unsigned
    (tmp_path / artifacts.METADATA_FILE).write_text(json.dumps({**meta, artifacts.SIGNATURE_FIELD: signature}))
    monkeypatch.setenv(artifacts.SIGNING_KEY_ENV, KEY)
    with pytest.raises(artifacts.ArtifactError, match="signature does not match"):
        artifacts.load_model(tmp_path)


def test_a_model_signed_with_another_key_is_refused(trained, tmp_path, monkeypatch):
    model, _, _, _ = trained
    save_signed(model, tmp_path, key=OTHER_KEY)
    monkeypatch.setenv(artifacts.SIGNING_KEY_ENV, KEY)
    with pytest.raises(artifacts.ArtifactError, match="signature does not match") as error:
        artifacts.load_model(tmp_path)
    assert KEY not in str(error.value) and OTHER_KEY not in str(error.value)


def test_an_unsigned_model_is_refused_when_a_key_is_set(trained, monkeypatch):
    _, out, _, _ = trained
    monkeypatch.setenv(artifacts.SIGNING_KEY_ENV, KEY)
    with pytest.raises(artifacts.ArtifactError) as error:
        artifacts.load_model(out)
    assert str(error.value).startswith(f"{out / artifacts.METADATA_FILE} is not signed, but "
                                       f"{artifacts.SIGNING_KEY_ENV} is set")


@pytest.mark.parametrize("signature", ["deadbeef", {"algorithm": "md5", "hmac": "00"}, {"algorithm": "hmac-sha256"},
                                       {"algorithm": "hmac-sha256", "hmac": "\u00e9" * 64}])
def test_a_malformed_signature_is_refused(trained, tmp_path, monkeypatch, signature):
    model, _, _, _ = trained
    meta = save_signed(model, tmp_path)
    (tmp_path / artifacts.METADATA_FILE).write_text(json.dumps({**meta, artifacts.SIGNATURE_FIELD: signature}))
    monkeypatch.setenv(artifacts.SIGNING_KEY_ENV, KEY)
    with pytest.raises(artifacts.ArtifactError, match="malformed signature field|signature does not match"):
        artifacts.load_model(tmp_path)


def test_without_a_key_loading_warns_once_that_nothing_was_checked(trained, tmp_path, caplog):
    model, out, _, _ = trained
    with caplog.at_level(logging.WARNING, logger="ccfraud.artifacts"):
        artifacts.load_model(out)
    assert [r.getMessage() for r in caplog.records] == [
        f"{out / artifacts.METADATA_FILE} is unsigned and {artifacts.SIGNING_KEY_ENV} is not set: "
        "loading it without a signature check"]
    save_signed(model, tmp_path)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ccfraud.artifacts"):
        artifacts.load_model(tmp_path)
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / artifacts.METADATA_FILE} is signed but {artifacts.SIGNING_KEY_ENV} is not set: "
        "the signature was not checked"]


def test_a_short_key_is_refused_without_showing_it(trained, monkeypatch):
    _, out, _, _ = trained
    monkeypatch.setenv(artifacts.SIGNING_KEY_ENV, "hunter2")
    with pytest.raises(artifacts.ArtifactError, match=f"{artifacts.SIGNING_KEY_ENV} is shorter than 32") as error:
        artifacts.load_model(out)
    assert "hunter2" not in str(error.value)


def test_an_empty_key_counts_as_no_key(trained, monkeypatch):
    """What CI gives a workflow whose secret is unavailable: the pipeline runs on, unsigned."""
    _, out, _, _ = trained
    monkeypatch.setenv(artifacts.SIGNING_KEY_ENV, "")
    assert artifacts.signing_key() is None
    artifacts.load_model(out)


@pytest.mark.parametrize("case, expected", [
    ("other key", "signature does not match"),
    ("unsigned", "is not signed"),
])
def test_the_server_does_not_become_ready_with_a_bad_signature(trained, tmp_path, monkeypatch, caplog, case, expected):
    from ccfraud.serving import create_app

    model, out, _, _ = trained
    model_dir = out if case == "unsigned" else tmp_path
    if case == "other key":
        save_signed(model, tmp_path, key=OTHER_KEY)
    monkeypatch.setenv(artifacts.SIGNING_KEY_ENV, KEY)
    with caplog.at_level(logging.DEBUG):
        client = create_app(str(model_dir)).test_client()
    assert client.get("/health").status_code == HTTPStatus.OK
    response = client.get("/ready")
    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    message = response.get_json()["error"]["message"]
    assert expected in message and str(model_dir / artifacts.METADATA_FILE) in message
    assert KEY not in response.get_data(as_text=True) and KEY not in caplog.text and OTHER_KEY not in caplog.text


def test_the_server_serves_a_model_signed_with_its_key(trained, tmp_path, monkeypatch):
    from ccfraud.serving import create_app

    model, _, _, _ = trained
    meta = save_signed(model, tmp_path)
    monkeypatch.setenv(artifacts.SIGNING_KEY_ENV, KEY)
    response = create_app(str(tmp_path)).test_client().get("/ready")
    assert response.status_code == HTTPStatus.OK
    assert response.get_json() == {"status": "ready", "model_version": meta["model_version"]}
