"""The prediction API: ``create_app`` builds the Flask app that serves the trained model.

Run it with the Procfile's gunicorn command (``make serve``); see :mod:`ccfraud.serving.app`.
"""

from ccfraud.serving.app import create_app

__all__ = ["create_app"]
