"""Publishing a model to a real S3 server: one immutable folder per model version, never overwritten."""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from http import HTTPStatus
from pathlib import Path

import numpy as np
import pytest

from ccfraud import artifacts, cli, modeling, s3, schema, synthetic
from ccfraud.publish import PublishError, publish_model, version_uri
from ccfraud.s3_server import LocalS3Server
from ccfraud.serving import model_source

pytestmark = pytest.mark.s3

KEY = "publish-test-key-" + "0123456789abcdef" * 3
OTHER_KEY = "another-publish-key-" + "fedcba9876543210" * 3


@pytest.fixture(autouse=True)
def no_signing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts without a key (whatever the developer's shell holds) and sets one if it needs it."""
    monkeypatch.delenv(artifacts.SIGNING_KEY_ENV, raising=False)


def train_model(out_dir: Path, *, seed: int, key: str | None = None) -> Path:
    """A small real model (seconds to train), saved like the train stage does (signed when ``key`` is given)."""
    data = synthetic.generate(rows=3000, frauds=60, seed=seed)
    model = modeling.make_pipeline("logreg", "class_weight").fit(data[schema.FEATURES], data[schema.TARGET])
    with pytest.MonkeyPatch.context() as env:
        if key is None:
            env.delenv(artifacts.SIGNING_KEY_ENV, raising=False)
        else:
            env.setenv(artifacts.SIGNING_KEY_ENV, key)
        artifacts.save_model(model, out_dir, threshold=0.5)
    return out_dir


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_model(tmp_path_factory.mktemp("model"), seed=0)


@pytest.fixture
def model_dir(trained: Path, tmp_path: Path) -> Path:
    """A private copy of the trained model, which a test may alter."""
    return Path(shutil.copytree(trained, tmp_path / "model"))


@pytest.fixture
def prefix(s3_env: LocalS3Server) -> str:
    """A models/ prefix of this test's own: the session server is shared."""
    return f"s3://{s3_env.bucket}/publish-tests/{uuid.uuid4().hex[:12]}/models/"


def metadata_of(model_dir: Path) -> dict:
    return json.loads((model_dir / artifacts.METADATA_FILE).read_text())


def rewrite_metadata(model_dir: Path, **changes: object) -> None:
    meta = metadata_of(model_dir)
    meta.update(changes)
    (model_dir / artifacts.METADATA_FILE).write_text(json.dumps(meta, indent=2))


def published_keys(uri: str, endpoint_url: str | None = None) -> list[str]:
    bucket, _ = s3.parse_s3_uri(uri, require_key=False)
    return [f"s3://{bucket}/{key}" for key in s3.list_keys(uri, endpoint_url=endpoint_url)]


def download_published(uri: str, dest: Path) -> Path:
    for name in (artifacts.METADATA_FILE, artifacts.MODEL_FILE):
        s3.download(uri + name, dest / name, progress=False)
    return dest


def test_publish_uploads_a_loadable_model_under_its_version(model_dir: Path, prefix: str, tmp_path: Path):
    version = metadata_of(model_dir)["model_version"]
    uri = publish_model(model_dir, prefix)
    assert uri == f"{prefix}{version}/"
    assert published_keys(uri) == [uri + artifacts.METADATA_FILE, uri + artifacts.MODEL_FILE]
    back = download_published(uri, tmp_path / "back")
    assert artifacts.file_sha256(back / artifacts.MODEL_FILE) == artifacts.file_sha256(model_dir / artifacts.MODEL_FILE)
    loaded = artifacts.load_model(back)
    assert loaded.version == version and loaded.threshold == 0.5
    rows = synthetic.generate(rows=500, frauds=10, seed=5)[schema.FEATURES]
    np.testing.assert_array_equal(modeling.fraud_probability(loaded.model, rows),
                                  modeling.fraud_probability(artifacts.load_model(model_dir).model, rows))


def test_version_uri_accepts_a_prefix_with_or_without_slash():
    assert version_uri("s3://b/models", "abc") == version_uri("s3://b/models/", "abc") == "s3://b/models/abc/"
    assert version_uri("s3://b", "abc") == "s3://b/abc/"


def test_publishing_the_same_model_again_changes_nothing(model_dir: Path, prefix: str, tmp_path: Path):
    uri = publish_model(model_dir, prefix)
    first = (download_published(uri, tmp_path / "first") / artifacts.METADATA_FILE).read_bytes()
    # Same model file, threshold and features; only bookkeeping differs (as after a retrain).
    rewrite_metadata(model_dir, trained_at="2030-01-01T00:00:00+00:00", note="republished")
    assert publish_model(model_dir, prefix) == uri
    assert (download_published(uri, tmp_path / "again") / artifacts.METADATA_FILE).read_bytes() == first


def test_a_different_model_under_the_same_version_is_refused(model_dir: Path, prefix: str, tmp_path: Path):
    uri = publish_model(model_dir, prefix)
    version = metadata_of(model_dir)["model_version"]
    other = train_model(tmp_path / "other", seed=1)
    rewrite_metadata(other, model_version=version)  # a clash: same version name, other bytes
    with pytest.raises(PublishError, match="refusing to overwrite") as error:
        publish_model(other, prefix)
    assert uri in str(error.value) and "sha256" in str(error.value)
    back = download_published(uri, tmp_path / "back")
    assert metadata_of(back)["sha256"] == metadata_of(model_dir)["sha256"]


def test_same_model_with_another_threshold_is_refused(model_dir: Path, prefix: str):
    publish_model(model_dir, prefix)
    rewrite_metadata(model_dir, threshold=0.3)
    with pytest.raises(PublishError, match=r"threshold: published 0\.5, local 0\.3"):
        publish_model(model_dir, prefix)


def test_an_interrupted_publish_is_completed(model_dir: Path, prefix: str):
    """A publish that stopped after the model file (before model.json) is finished by the next one."""
    target = version_uri(prefix, metadata_of(model_dir)["model_version"])
    s3.upload(model_dir / artifacts.MODEL_FILE, target + artifacts.MODEL_FILE, progress=False)
    assert publish_model(model_dir, prefix) == target
    assert published_keys(target) == [target + artifacts.METADATA_FILE, target + artifacts.MODEL_FILE]


def test_a_foreign_file_in_the_version_folder_is_not_overwritten(model_dir: Path, prefix: str, tmp_path: Path):
    target = version_uri(prefix, metadata_of(model_dir)["model_version"])
    foreign = tmp_path / "foreign.skops"
    foreign.write_bytes(b"not this model")
    s3.upload(foreign, target + artifacts.MODEL_FILE, progress=False)
    with pytest.raises(PublishError, match="already exists with different content"):
        publish_model(model_dir, prefix)
    assert published_keys(target) == [target + artifacts.MODEL_FILE]
    s3.download(target + artifacts.MODEL_FILE, tmp_path / "still.skops", progress=False)
    assert (tmp_path / "still.skops").read_bytes() == b"not this model"


def test_a_version_folder_with_other_objects_is_refused(model_dir: Path, prefix: str, tmp_path: Path):
    target = version_uri(prefix, metadata_of(model_dir)["model_version"])
    note = tmp_path / "notes.txt"
    note.write_text("someone else's file")
    s3.upload(note, target + "notes.txt", progress=False)
    with pytest.raises(PublishError, match="not part of model") as error:
        publish_model(model_dir, prefix)
    assert target + "notes.txt" in str(error.value)
    assert published_keys(target) == [target + "notes.txt"]


def test_a_tampered_local_model_is_never_published(model_dir: Path, prefix: str):
    path = model_dir / artifacts.MODEL_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(artifacts.ArtifactError, match="checksum mismatch"):
        publish_model(model_dir, prefix)
    assert published_keys(prefix) == []


def test_a_model_file_rewritten_during_the_publish_is_not_uploaded_under_the_old_version(
        model_dir: Path, prefix: str, monkeypatch: pytest.MonkeyPatch):
    """A train run replaces model.skops after the publish verified it: its bytes must not go up under the version
    the old model.json names (servers would refuse that folder, and later publishes could not repair it)."""
    verify = artifacts.verify

    def verify_then_retrain(directory: Path, metadata: dict) -> Path:
        path = verify(directory, metadata)
        train_model(directory.parent / "retrained", seed=1)
        shutil.copyfile(directory.parent / "retrained" / artifacts.MODEL_FILE, path)
        return path

    monkeypatch.setattr(artifacts, "verify", verify_then_retrain)
    with pytest.raises(PublishError, match=rf"{artifacts.MODEL_FILE} changed while it was being published"):
        publish_model(model_dir, prefix)
    assert published_keys(prefix) == []


def test_a_wrong_bucket_is_named(model_dir: Path, s3_env: LocalS3Server):
    with pytest.raises(s3.S3Error, match="bucket 'no-such-ccfraud-bucket' does not exist") as error:
        publish_model(model_dir, "s3://no-such-ccfraud-bucket/models/")
    assert "s3://no-such-ccfraud-bucket/models/" in str(error.value)
    assert s3_env.secret_key not in str(error.value)


def test_cli_publishes_with_an_explicit_endpoint(model_dir: Path, prefix: str, s3_env: LocalS3Server,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]):
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # so only --endpoint-url can find the server
    assert cli.main(["publish-model", str(model_dir), prefix, "--endpoint-url", s3_env.endpoint_url]) == 0
    uri = version_uri(prefix, metadata_of(model_dir)["model_version"])
    assert capsys.readouterr().out == uri + "\n"
    keys = published_keys(uri, endpoint_url=s3_env.endpoint_url)
    assert keys == [uri + artifacts.METADATA_FILE, uri + artifacts.MODEL_FILE]


def test_cli_errors_are_one_line_naming_the_bucket(model_dir: Path, s3_env: LocalS3Server):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["publish-model", str(model_dir), "s3://no-such-ccfraud-bucket/models/"])
    message = str(exit_info.value.code)
    assert message.startswith("error: cannot list s3://no-such-ccfraud-bucket/models/")
    assert "does not exist" in message and "Traceback" not in message


def test_a_published_model_is_served(model_dir: Path, prefix: str):
    from ccfraud.serving import create_app

    uri = publish_model(model_dir, prefix)
    client = create_app(uri).test_client()
    version = metadata_of(model_dir)["model_version"]
    assert client.get("/ready").get_json() == {"status": "ready", "model_version": version}
    rows = synthetic.generate(rows=500, frauds=10, seed=5)
    instances = [{name: float(row[name]) for name in schema.FEATURES} for _, row in rows.head(20).iterrows()]
    response = client.post("/predict", json={"instances": instances})
    assert response.status_code == HTTPStatus.OK, response.get_data(as_text=True)
    served = [p["fraud_probability"] for p in response.get_json()["predictions"]]
    expected = modeling.fraud_probability(artifacts.load_model(model_dir).model, rows.head(20)[schema.FEATURES])
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-12)


# --- signed models -----------------------------------------------------------------------------

def test_with_a_key_an_unsigned_model_is_published_signed_and_served(model_dir: Path, prefix: str,
                                                                     monkeypatch: pytest.MonkeyPatch):
    from ccfraud.serving import create_app

    local = (model_dir / artifacts.METADATA_FILE).read_bytes()
    monkeypatch.setenv(artifacts.SIGNING_KEY_ENV, KEY)
    uri = publish_model(model_dir, prefix)
    assert (model_dir / artifacts.METADATA_FILE).read_bytes() == local  # a DVC output: left as it was
    assert published_keys(uri) == [uri + artifacts.METADATA_FILE, uri + artifacts.MODEL_FILE]
    version = metadata_of(model_dir)["model_version"]
    loaded = model_source.load(uri)
    assert loaded.version == version and loaded.metadata[artifacts.SIGNATURE_FIELD]["algorithm"] == "hmac-sha256"
    assert create_app(uri).test_client().get("/ready").get_json() == {"status": "ready", "model_version": version}
    assert publish_model(model_dir, prefix) == uri  # already published, signed: nothing to do


def test_a_model_signed_at_training_is_published_as_it_is(tmp_path: Path, prefix: str,
                                                          monkeypatch: pytest.MonkeyPatch):
    model_dir = train_model(tmp_path / "signed", seed=0, key=KEY)
    monkeypatch.setenv(artifacts.SIGNING_KEY_ENV, KEY)
    uri = publish_model(model_dir, prefix)
    back = download_published(uri, tmp_path / "back")
    assert (back / artifacts.METADATA_FILE).read_bytes() == (model_dir / artifacts.METADATA_FILE).read_bytes()


def test_the_server_refuses_a_published_model_signed_with_another_key(model_dir: Path, prefix: str,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture):
    from ccfraud.serving import create_app

    monkeypatch.setenv(artifacts.SIGNING_KEY_ENV, OTHER_KEY)
    uri = publish_model(model_dir, prefix)
    monkeypatch.setenv(artifacts.SIGNING_KEY_ENV, KEY)
    with pytest.raises(artifacts.ArtifactError) as error:
        model_source.load(uri)
    assert str(error.value).startswith(f"{uri}{artifacts.METADATA_FILE}: signature does not match")
    with caplog.at_level(logging.DEBUG):
        response = create_app(uri).test_client().get("/ready")
    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert "signature does not match" in response.get_json()["error"]["message"]
    for key in (KEY, OTHER_KEY):
        assert key not in response.get_data(as_text=True) and key not in caplog.text


def test_the_server_refuses_an_unsigned_published_model_when_it_has_a_key(model_dir: Path, prefix: str,
                                                                          monkeypatch: pytest.MonkeyPatch):
    uri = publish_model(model_dir, prefix)
    monkeypatch.setenv(artifacts.SIGNING_KEY_ENV, KEY)
    with pytest.raises(artifacts.ArtifactError, match=f"{uri}{artifacts.METADATA_FILE} is not signed"):
        model_source.load(uri)


def test_a_local_model_signed_with_another_key_is_never_published(tmp_path: Path, prefix: str,
                                                                  monkeypatch: pytest.MonkeyPatch):
    model_dir = train_model(tmp_path / "signed", seed=0, key=OTHER_KEY)
    monkeypatch.setenv(artifacts.SIGNING_KEY_ENV, KEY)
    with pytest.raises(artifacts.ArtifactError, match="signature does not match"):
        publish_model(model_dir, prefix)
    assert published_keys(prefix) == []


def test_an_unsigned_published_copy_is_not_taken_for_a_signed_one(model_dir: Path, prefix: str,
                                                                  monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    uri = publish_model(model_dir, prefix)
    before = (download_published(uri, tmp_path / "before") / artifacts.METADATA_FILE).read_bytes()
    monkeypatch.setenv(artifacts.SIGNING_KEY_ENV, KEY)
    with pytest.raises(PublishError, match=f"{uri} already holds this model, but .* is not signed"):
        publish_model(model_dir, prefix)
    assert (download_published(uri, tmp_path / "after") / artifacts.METADATA_FILE).read_bytes() == before


def test_an_interrupted_signed_publish_is_completed_signed(model_dir: Path, prefix: str,
                                                          monkeypatch: pytest.MonkeyPatch):
    target = version_uri(prefix, metadata_of(model_dir)["model_version"])
    s3.upload(model_dir / artifacts.MODEL_FILE, target + artifacts.MODEL_FILE, progress=False)
    monkeypatch.setenv(artifacts.SIGNING_KEY_ENV, KEY)
    with pytest.raises(s3.S3Error, match=r"no object with key '.*/model\.json'"):
        model_source.load(target)  # the model file alone is not a model
    assert publish_model(model_dir, prefix) == target
    assert model_source.load(target).metadata[artifacts.SIGNATURE_FIELD]["algorithm"] == "hmac-sha256"


def test_publishing_without_a_key_warns_that_the_model_is_unsigned(model_dir: Path, prefix: str,
                                                                  caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING, logger="ccfraud.publish"):
        publish_model(model_dir, prefix)
    assert [r.getMessage() for r in caplog.records] == [
        f"publishing an unsigned model ({artifacts.SIGNING_KEY_ENV} is not set): "
        "servers with a signing key will refuse it"]
