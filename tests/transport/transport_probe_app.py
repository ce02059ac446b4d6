"""A tiny ASGI app served through ``xksproxy.runtime.server`` by the transport tests.

It echoes what the server handed to the app (HTTP version, scheme, headers) and appends one line
per request to ``$PROBE_LOG``, so a test can prove that a refused client never reached the app.
"""

from __future__ import annotations

import json
import os
from typing import Any


def create_app() -> Any:
    from xksproxy.observe.requestlog import configure_logging

    configure_logging("info")  # like the real app: the JSON service log on stdout
    log = os.environ.get("PROBE_LOG")

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        more = True
        while more:
            msg = await receive()
            more = msg.get("more_body", False)
        if log and scope["path"] != "/ping":
            with open(log, "a") as f:
                f.write(f"{scope['method']} {scope['path']}\n")
        body = json.dumps(
            {
                "http_version": scope["http_version"],
                "scheme": scope["scheme"],
                "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
                "pid": os.getpid(),
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


def broken() -> Any:
    """A factory whose app fails its lifespan start-up (like an unreachable HSM)."""

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.failed", "message": "probe: HSM unreachable"})

    return app
