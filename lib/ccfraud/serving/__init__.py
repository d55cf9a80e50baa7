"""The prediction API: ``create_app`` builds the Flask app that serves the trained model.

Run it with the Procfile's gunicorn command (``make serve``); see :mod:`ccfraud.serving.app`.

``create_app`` is imported on first use, not with the package: gunicorn imports the
package (for :mod:`ccfraud.serving.gunicorn_conf`) before it applies the Procfile's
``--env OMP_NUM_THREADS=1``, and OpenMP reads that variable once, when the app's
scikit-learn first loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ccfraud.serving.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from ccfraud.serving.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
