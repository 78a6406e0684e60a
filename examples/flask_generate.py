"""A Flask app using the blocking client: one call runs a template to its end and answers the output URLs.

    pip install './client[examples]'
    GENERATION_TARGET=127.0.0.1:50051 flask --app examples/flask_generate.py run --port 5000

``POST /generate`` with ``{"template": "solid_image", "params": {...}}`` waits for the run and answers
its outputs; ``GET /runs/<run_id>`` is the run; ``GET /runs/<run_id>/events`` relays its events as
server-sent events (``Last-Event-ID`` continues after that seq). The same app runs under gunicorn:
``gunicorn --chdir examples 'flask_generate:create_app()'``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

from flask import Flask, Response, jsonify, request

from generation_client import (
    GenerationClient,
    InvalidRequestError,
    NotFoundError,
    RunFailedError,
    event_to_dict,
    message_to_dict,
)


def create_app() -> Flask:
    app = Flask(__name__)
    # One client for the whole app: it is thread-safe, and Flask's server answers each request on a thread.
    client = GenerationClient(
        os.environ.get("GENERATION_TARGET", "127.0.0.1:50051"), token=os.environ.get("GENERATION_TOKEN") or None
    )

    @app.post("/generate")
    def generate() -> tuple[Response, int]:
        body = request.get_json(force=True)
        try:
            run = client.run(template=body["template"], params=body.get("params", {}), timeout=300)
        except InvalidRequestError as exc:
            return jsonify(error=str(exc), violations=exc.violations), 422
        except RunFailedError as exc:
            return jsonify(error=str(exc), run=message_to_dict(exc.run)), 502
        return jsonify(run_id=run.run_id, outputs=[o.url for o in run.outputs]), 200

    @app.get("/runs/<run_id>")
    def get(run_id: str) -> tuple[Response, int]:
        try:
            return jsonify(message_to_dict(client.get(run_id))), 200
        except NotFoundError as exc:
            return jsonify(error=str(exc)), 404

    @app.get("/runs/<run_id>/events")
    def events(run_id: str) -> Response:
        after = int(request.headers.get("Last-Event-ID", 0))

        def stream() -> Iterator[str]:
            for event in client.watch(run_id, after_seq=after):
                yield f"id: {event.seq}\ndata: {json.dumps(event_to_dict(event))}\n\n"

        return Response(stream(), mimetype="text/event-stream")

    return app
