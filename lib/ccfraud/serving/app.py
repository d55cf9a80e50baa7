"""The Flask app factory: load the model once, then serve health, readiness, metadata and predictions.

The model is loaded when the app is created (under gunicorn ``--preload``: once, in
the master, before the workers fork), never per request. A model that cannot be
loaded does not stop the process: ``/health`` still answers, ``/ready``, ``/model``
and ``/predict`` return 503 with the reason, and the reason is logged, so an
orchestrator sees "alive but not ready" instead of a crash loop with no explanation.
Building an app changes nothing process-wide: freezing the heap out of garbage
collection and sizing Arrow's thread pool are the server's job
(:mod:`ccfraud.serving.gunicorn_conf`, the Procfile's gunicorn hooks).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import RequestEntityTooLarge

from ccfraud import artifacts
from ccfraud.serving import config as serving_config
from ccfraud.serving import model_source, openapi, payload
from ccfraud.serving.errors import ApiError, json_response, register_error_handlers
from ccfraud.serving.scoring import Scorer

log = logging.getLogger(__name__)

EXTENSION = "ccfraud"
JSON = "application/json"
CSV = "text/csv"
#: Metadata keys /model shows, in this order (the training params and data checksums stay in model.json).
METADATA_KEYS = ("model_version", "sha256", "trained_at", "threshold", "features", "metrics", "library_versions",
                 "git_revision", "candidate", "best_params", "threshold_rule")


@dataclass
class ModelState:
    """What this process serves: the loaded model and its scorer, or why there is none."""

    location: str
    loaded: artifacts.LoadedModel | None = None
    scorer: Scorer | None = None
    error: str | None = None

    def require(self) -> tuple[artifacts.LoadedModel, Scorer]:
        if self.loaded is None or self.scorer is None:
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, f"model not loaded: {self.error}")
        return self.loaded, self.scorer


def load_state(location: str) -> ModelState:
    """Load and verify the model; on any failure record the reason instead of raising."""
    state = ModelState(location=location)
    try:
        state.loaded = model_source.load(location)
        state.scorer = Scorer(state.loaded.model)
    except Exception as exc:  # the process must come up and say why it is not ready
        state.error = f"cannot load the model from {location}: {exc}"
        log.error("%s", state.error)
        return state
    log.info("serving model %s (threshold %.4g) from %s; scoring path: %s (classifier: %s)", state.loaded.version,
             state.loaded.threshold, location, state.scorer.path, state.scorer.classifier_path or "pipeline")
    return state


def _configure_logging() -> None:
    """Make our INFO/ERROR lines visible under gunicorn, which configures only its own loggers."""
    package = logging.getLogger("ccfraud")
    if package.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"))
    package.addHandler(handler)
    package.setLevel(logging.INFO)


def _metadata(state: ModelState, loaded: artifacts.LoadedModel, scorer: Scorer) -> dict[str, Any]:
    meta = loaded.metadata
    out = {key: meta.get(key) for key in METADATA_KEYS if key in meta}
    out["metrics"] = meta.get("metrics", {})
    out["location"] = state.location
    out["scoring_path"] = scorer.path
    return out


def _predictions(loaded: artifacts.LoadedModel, probabilities: Any) -> dict[str, Any]:
    threshold = loaded.threshold
    return {
        "model_version": loaded.version,
        "threshold": threshold,
        "predictions": [{"fraud_probability": p, "is_fraud": p >= threshold} for p in probabilities.tolist()],
    }


def _request_body() -> bytes:
    """The request body, read from the server's input stream in as few calls as it allows.

    werkzeug's ``request.get_data()`` copies the body twice more through its own
    buffers (for a 6 MB batch under gunicorn, 10-16 ms instead of 5-8 ms reading the
    server's stream directly), and it cuts a chunked body that is over the size limit
    short without an error. So the body is read here, with the same rules for both
    framings: over the limit is a 413, and a body shorter than its Content-Length (the
    client went away) is a 400, never a shorter request scored. A body that stops
    arriving is a 408: the server's read raises :class:`TimeoutError` once the request's
    time is up (``CCFRAUD_READ_TIMEOUT``, :mod:`ccfraud.serving.worker`), so a client
    trickling bytes cannot keep the request open.
    """
    try:
        return _read_body()
    except TimeoutError as exc:
        length = request.content_length
        announced = f"the {length} bytes its Content-Length announced" if length is not None else "its chunked body"
        raise ApiError(HTTPStatus.REQUEST_TIMEOUT, f"{exc}: {announced} had not all arrived") from None


def _read_body() -> bytes:
    """:func:`_request_body` without the deadline's 408."""
    limit = request.max_content_length
    length = request.content_length
    if length is not None and limit is not None and length > limit:
        raise RequestEntityTooLarge()
    source = request.environ["wsgi.input"]
    if length is None:
        if "chunked" not in request.headers.get("Transfer-Encoding", "").lower():
            return b""  # no body announced
        if not request.environ.get("wsgi.input_terminated"):  # gunicorn sets it; a server that does not cannot
            raise ApiError(HTTPStatus.LENGTH_REQUIRED, "this server cannot read a chunked request body; "
                           "send a Content-Length header")
        return _read_to_end(source, limit)  # the server ends the stream after the last chunk
    parts: list[bytes] = []
    remaining = length
    while remaining > 0:
        part = source.read(remaining)
        if not part:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"the request body ended after {length - remaining} of the "
                           f"{length} bytes its Content-Length announced")
        parts.append(part)
        remaining -= len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _read_to_end(source: Any, limit: int | None) -> bytes:
    """A body without Content-Length, read to its end; 413 as soon as it passes ``limit``."""
    parts: list[bytes] = []
    size = 0
    while part := source.read(1 << 20 if limit is None else min(1 << 20, limit + 1 - size)):
        parts.append(part)
        size += len(part)
        if limit is not None and size > limit:
            raise RequestEntityTooLarge()
    return b"".join(parts)


def create_app(model_location: str | None = None, *, max_rows: int | None = None,
               max_body_bytes: int | None = None) -> Flask:
    """Build the API serving the model at ``model_location`` (a directory or ``s3://bucket/prefix/``).

    Unset arguments come from ``CCFRAUD_MODEL``, ``CCFRAUD_MAX_ROWS`` and
    ``CCFRAUD_MAX_BODY_BYTES``, else the defaults in :mod:`ccfraud.serving.config`.
    """
    _configure_logging()
    settings = serving_config.resolve(model_location, max_rows=max_rows, max_body_bytes=max_body_bytes)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    state = load_state(settings.model_location)
    app.extensions[EXTENSION] = state
    spec = openapi.document(settings.max_rows, settings.max_body_bytes)
    register_error_handlers(app)

    @app.get("/health")
    def health() -> Response:
        return json_response({"status": "ok"})

    @app.get("/ready")
    def ready() -> Response:
        loaded, _ = state.require()
        return json_response({"status": "ready", "model_version": loaded.version})

    @app.get("/model")
    def model() -> Response:
        loaded, scorer = state.require()
        return json_response(_metadata(state, loaded, scorer))

    @app.get("/openapi.json")
    def openapi_json() -> Response:
        return json_response(spec)

    @app.post("/predict")
    def predict() -> Response:
        loaded, scorer = state.require()
        mimetype = request.mimetype
        if mimetype == JSON:
            matrix = payload.parse_json(_request_body(), settings.max_rows)
        elif mimetype == CSV:
            matrix = payload.parse_csv(_request_body(), settings.max_rows)
        else:
            found = request.content_type or "no Content-Type header"
            raise ApiError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                           f"unsupported content type: expected {JSON} or {CSV}, found {found}")
        return json_response(_predictions(loaded, scorer.probabilities(matrix)))

    return app
