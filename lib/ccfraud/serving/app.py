"""The Flask app factory: load the model once, then serve health, readiness, metadata, predictions and metrics.

Predictions carry reason codes when asked (``?explain=true`` or ``"explain": true``:
:mod:`ccfraud.explain`, built with the model); every answered request is counted for
``GET /metrics`` (:mod:`ccfraud.serving.metrics`).

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
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import numpy as np
from flask import Flask, Response, request
from gunicorn.http.errors import NoMoreData, ParseException
from werkzeug.exceptions import RequestEntityTooLarge

from ccfraud import artifacts, explain, sources
from ccfraud.serving import config as serving_config
from ccfraud.serving import model_source, openapi, payload
from ccfraud.serving.errors import ApiError, json_response, register_error_handlers
from ccfraud.serving.metrics import UNMATCHED, ServiceMetrics
from ccfraud.serving.scoring import Scorer

log = logging.getLogger(__name__)

EXTENSION = "ccfraud"
#: Where the app keeps its :class:`ServiceMetrics` (``app.extensions``).
METRICS_EXTENSION = "ccfraud.metrics"
JSON = "application/json"
CSV = "text/csv"
#: Metadata keys /model shows, in this order (the training params and data checksums stay in model.json).
METADATA_KEYS = ("model_version", "sha256", "trained_at", "threshold", "features", "metrics", "library_versions",
                 "git_revision", "candidate", "best_params", "threshold_rule")


@dataclass
class ModelState:
    """What this process serves: the loaded model, its scorer and explainer, or why there is none."""

    location: str
    loaded: artifacts.LoadedModel | None = None
    scorer: Scorer | None = None
    error: str | None = None
    explainer: explain.Explainer | None = None
    #: Why requests for reason codes are refused (501) while predictions are served.
    explain_error: str | None = None

    def require_explainer(self) -> explain.Explainer:
        if self.explainer is None:
            raise ApiError(HTTPStatus.NOT_IMPLEMENTED, f"no reason codes for this model: {self.explain_error}",
                           field=payload.EXPLAIN)
        return self.explainer

    def require(self) -> tuple[artifacts.LoadedModel, Scorer]:
        if self.loaded is None or self.scorer is None:
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, f"model not loaded: {self.error}")
        return self.loaded, self.scorer


def load_state(location: str) -> ModelState:
    """Load and verify the model; on any failure record the reason instead of raising.

    The location is shown (``/model``, the 503 answers, the log) without credentials: one carrying
    them (``s3://KEY:SECRET@bucket/...``, ``https://user:password@...``, ``?token=``) is refused
    before anything that could repeat it reads it.
    """
    try:
        shown, problems, malformed = sources.redact(location), sources.credential_problems(location), None
    except ValueError as exc:  # the URI itself may hold a secret, so not shown
        shown, problems, malformed = "(a malformed URI)", [], exc
    state = ModelState(location=shown)
    try:
        if malformed is not None:
            raise ValueError(f"malformed URI ({malformed})")
        if problems:
            raise ValueError(f"the location carries credentials ({'; '.join(problems)}); give it without them: "
                             "S3 credentials come from the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) "
                             "or an AWS profile")
        state.loaded = model_source.load(location)
        state.scorer = Scorer(state.loaded.model)
    except Exception as exc:  # the process must come up and say why it is not ready
        state.error = f"cannot load the model from {shown}: {exc}"
        log.error("%s", state.error)
        return state
    log.info("serving model %s (threshold %.4g) from %s; scoring path: %s (classifier: %s)", state.loaded.version,
             state.loaded.threshold, shown, state.scorer.path, state.scorer.classifier_path or "pipeline")
    try:
        state.explainer = explain.Explainer(state.loaded.model)
    except explain.UnsupportedModel as exc:
        state.explain_error = str(exc)
        log.warning("reason codes unavailable: %s", exc)
    else:
        log.info("reason codes: %s attributions on the %s scale", state.explainer.method, state.explainer.scale)
    return state


def _model_info(state: ModelState) -> dict[str, str] | None:
    """The labels of the ``model_info`` metric, or None without a model."""
    if state.loaded is None:
        return None
    return {"model_version": state.loaded.version, "candidate": str(state.loaded.metadata.get("candidate") or ""),
            "threshold": repr(state.loaded.threshold)}


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


def _predictions(loaded: artifacts.LoadedModel, probabilities: Any, flagged: Any) -> dict[str, Any]:
    """The /predict answer; ``flagged`` is ``probabilities >= loaded.threshold``, computed once per request."""
    return {
        "model_version": loaded.version,
        "threshold": loaded.threshold,
        "predictions": [{"fraud_probability": p, "is_fraud": f}
                        for p, f in zip(probabilities.tolist(), flagged.tolist(), strict=True)],
    }


def _add_reasons(answer: dict[str, Any], explanation: explain.Explanation) -> None:
    """Each prediction's reason codes, and what their numbers are, into a /predict answer."""
    answer["explanation"] = {"method": explanation.method, "scale": explanation.scale, "base_value": explanation.base,
                             "top": explain.TOP_REASONS}
    for row, prediction in enumerate(answer["predictions"]):
        prediction["reasons"] = explanation.reasons(row)


def _explain_query() -> bool:
    """``?explain=true`` or ``?explain=false``; absent is false; anything else (or twice) a 400 naming it."""
    if not request.query_string:
        return False
    values = request.args.getlist(payload.EXPLAIN)
    if not values:
        return False
    if len(values) != 1 or values[0] not in ("true", "false"):
        found = ", ".join(repr(v) for v in values) if values != [""] else "an empty value"
        raise ApiError(HTTPStatus.BAD_REQUEST, f"query parameter '{payload.EXPLAIN}': expected true or false, "
                       f"once; found {found}", field=payload.EXPLAIN)
    return values[0] == "true"


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
    except (ParseException, NoMoreData) as exc:  # gunicorn parses a chunked body's framing only as it is read
        raise ApiError(HTTPStatus.BAD_REQUEST, f"malformed chunked request body: {exc}") from None


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
    metrics = app.extensions[METRICS_EXTENSION] = ServiceMetrics(_model_info(state))
    spec = openapi.document(settings.max_rows, settings.max_body_bytes)
    register_error_handlers(app)

    @app.before_request
    def start_clock() -> None:
        request.environ["ccfraud.started"] = time.perf_counter()

    @app.after_request
    def count(response: Response) -> Response:
        started = request.environ.get("ccfraud.started")
        if started is not None:
            rule = request.url_rule
            metrics.request(rule.rule if rule is not None else UNMATCHED, request.method, response.status_code,
                            time.perf_counter() - started)
        return response

    @app.get("/metrics")
    def metrics_text() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, content_type=content_type)

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
        explain_rows = _explain_query()
        mimetype = request.mimetype
        if mimetype == JSON:
            matrix, explain_body = payload.parse_json(_request_body(), settings.max_rows)
            explain_rows = explain_rows or explain_body
        elif mimetype == CSV:
            matrix = payload.parse_csv(_request_body(), settings.max_rows)
        else:
            found = request.content_type or "no Content-Type header"
            raise ApiError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                           f"unsupported content type: expected {JSON} or {CSV}, found {found}")
        explainer = state.require_explainer() if explain_rows else None
        probabilities = scorer.probabilities(matrix)
        flagged = probabilities >= loaded.threshold
        answer = _predictions(loaded, probabilities, flagged)
        if explainer is not None:
            _add_reasons(answer, explainer.explain(matrix))
        metrics.scored(len(probabilities), int(np.count_nonzero(flagged)), explain_rows)
        return json_response(answer)

    return app
