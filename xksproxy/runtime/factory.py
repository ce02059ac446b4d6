"""The app factory the servers load in each worker: ``xksproxy.runtime.factory:create_app``.

Why in runtime/ and not in the service: building a worker's app ties the worker to its launcher
(:mod:`xksproxy.runtime.lifeline`), reads the config path from the environment, configures
logging and attaches the operations features (:mod:`xksproxy.runtime.operations`: admission,
quotas, metrics, audit, reload).  Those are process concerns; the service
(:class:`xksproxy.service.app.XksApp`) takes what it needs as arguments and never imports
runtime/.
"""

from __future__ import annotations

from pathlib import Path

from xksproxy import environment
from xksproxy.config import Config, load_config
from xksproxy.observe.requestlog import configure_logging
from xksproxy.runtime import lifeline, operations
from xksproxy.service.app import XksApp


def create_app(config: Config | None = None) -> XksApp:
    """App factory for ASGI servers (and, wrapped, for RSGI: :mod:`xksproxy.runtime.rsgi`).

    Without ``config`` this is a worker of ``xksproxy serve``: the config path comes from
    ``XKSPROXY_CONFIG`` and the worker ends with its launcher.  ``create_app(config)`` is for
    tests and tools: the same app and operations features, no launcher tie.  Each server worker
    calls this after fork, so every worker opens its own HSM sessions (at lifespan start-up).
    """
    if config is None:
        lifeline.tie_to_launcher()  # a worker of `xksproxy serve`: end with the launcher
        path = environment.CONFIG.get()
        if not path:
            raise RuntimeError(
                f"{environment.CONFIG.name} is not set: it must name the config file"
            )
        config = load_config(Path(path))
    configure_logging(config.logging.level)
    app = XksApp(config)
    operations.install(app)
    return app
