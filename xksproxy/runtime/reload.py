"""Configuration reload without restart: credential rotation, keys, quotas, Cedar policies.

Why each worker reloads itself: workers share nothing, and restarting them (what granian and
hypercorn do on SIGHUP) closes their connections. Instead every worker runs a :class:`Reloader`
in its event loop that

- polls, every ``interval_s`` (1 s), the modification time, size and inode of the config file, of
  every ``file:`` secret and ``policy`` file it references and of the launcher's reload trigger
  file (a changed policy is recompiled, and its decision cache starts empty);
- reloads at once on SIGHUP delivered to the worker itself;
- validates the new file with the normal loader and only then swaps the key store table
  (:meth:`XksApp.replace_keystores`) and the quotas. Requests already running finish with the
  table they started with; connections are never touched.

So a credential removed from the file stops working within about ``interval_s`` + one request,
well under 5 s, and a new one starts working as fast.

A reload with an invalid file keeps the running configuration and logs the loader's message
(it names the option and what is wrong, never a secret value) once per distinct change. Changes
to sections that cannot be applied in place (``[server]``, ``[tls]``, ``[metrics]``,
``[logging]``, ``[audit]``, ``[health]``, ``[[hsm]]``) are logged as "needs a restart" and
otherwise ignored; a key store that names an ``[[hsm]]`` this process has no pool for is refused
the same way as an invalid file.

SIGHUP to the launcher: the launcher calls :func:`prepare_parent` before starting workers (it
exports ``$XKSPROXY_RELOAD_FILE``) and routes its own SIGHUP to :func:`request_reload`, which
touches that file; every worker sees it within ``interval_s``. No worker is respawned (granian's
own SIGHUP handler is redirected here by :func:`xksproxy.runtime.patches.route_granian_sighup`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import re
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xksproxy import environment
from xksproxy.config import Config, ConfigError, load_config

log = logging.getLogger("xksproxy.reload")

_FILE_REF = re.compile(r"""["']file:([^"'\n]+)["']""")
_POLICY_REF = re.compile(r"""^\s*policy\s*=\s*["']([^"'\n]+)["']""", re.MULTILINE)
#: Config sections a worker cannot apply in place. ``logging`` is among them: the log level and
#: handlers and the request-log observer are set up once at start (and granian's own log level by
#: the launcher), so a reload that said "reloaded" for them would be claiming what it did not do.
_RESTART_SECTIONS = ("server", "tls", "metrics", "logging", "audit", "health", "hsms")


def _stat_sig(path: Path) -> tuple[int, ...] | None:
    """What tells us a file changed: content (mtime, size), replacement (inode), mode (ctime)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_mode)


def watched_files(config_path: Path) -> list[Path]:
    """The config file, every ``file:`` secret and Cedar ``policy`` file it references, and the
    reload trigger."""
    files = [config_path]
    with contextlib.suppress(OSError, UnicodeDecodeError):
        text = config_path.read_text(encoding="utf-8")
        for ref in _FILE_REF.findall(text) + _POLICY_REF.findall(text):
            p = Path(ref).expanduser()
            files.append(p if p.is_absolute() else config_path.parent / p)
    trigger = environment.RELOAD_FILE.get()
    if trigger:
        files.append(Path(trigger))
    return files


def signature(config_path: Path) -> tuple[tuple[str, tuple[int, ...] | None], ...]:
    return tuple((str(p), _stat_sig(p)) for p in watched_files(config_path))


def describe_changes(old: Config, new: Config) -> dict[str, Any]:
    """What a reload changes, for the log: AKIDs are identifiers, never secrets."""
    out: dict[str, Any] = {}
    old_stores = {s.name: s for s in old.keystores}
    new_stores = {s.name: s for s in new.keystores}
    for name in sorted(old_stores.keys() | new_stores.keys()):
        a, b = old_stores.get(name), new_stores.get(name)
        if a is None:
            out[name] = "added"
        elif b is None:
            out[name] = "removed"
        else:
            old_by_id = {c.access_key_id: c.secret for c in a.credentials}
            new_by_id = {c.access_key_id: c.secret for c in b.credentials}
            old_ids, new_ids = set(old_by_id), set(new_by_id)
            secrets_changed = sorted(
                akid for akid in old_ids & new_ids if old_by_id[akid] != new_by_id[akid]
            )
            d: dict[str, Any] = {}
            if new_ids - old_ids:
                d["credentialsAdded"] = sorted(new_ids - old_ids)
            if old_ids - new_ids:
                d["credentialsRemoved"] = sorted(old_ids - new_ids)
            if secrets_changed:
                d["secretsChanged"] = secrets_changed
            if a != b and not d:
                d["changed"] = True
            if d:
                out[name] = d
    return out


def restart_needed(old: Config, new: Config) -> list[str]:
    return [s for s in _RESTART_SECTIONS if getattr(old, s, None) != getattr(new, s, None)]


class Reloader:
    """Watches one config file and applies valid changes through ``apply``.

    ``apply(new_config)`` must swap state atomically; raising :class:`ConfigError` from it
    refuses the reload (logged, running configuration kept).
    """

    def __init__(
        self,
        config_path: Path,
        current: Config,
        apply: Callable[[Config], None],
        *,
        interval_s: float = 1.0,
        on_result: Callable[[str], None] | None = None,
    ) -> None:
        self.config_path = Path(config_path)
        self.current = current
        self._apply = apply
        self.interval_s = interval_s
        self._on_result = on_result
        self._sig = signature(self.config_path)
        self._task: asyncio.Task[None] | None = None
        self._sighup = False
        self.reloads = 0
        self.failures = 0
        self.last_error: str | None = None

    def check(self) -> bool | None:
        """Reload if anything watched changed; None when nothing changed."""
        sig = signature(self.config_path)
        if sig == self._sig:
            return None
        self._sig = sig
        return self.reload_now("file change")

    def reload_now(self, reason: str) -> bool:
        """Load, validate and apply the file now; False (and a log line) if it is refused."""
        try:
            new = load_config(self.config_path)
            self._apply(new)
        except ConfigError as exc:
            self.failures += 1
            self.last_error = exc.message
            log.error(
                "configuration reload refused; the running configuration stays in force",
                extra={
                    "fields": {
                        "reason": reason,
                        "file": str(self.config_path),
                        "error": exc.message,
                    }
                },
            )
            self._report("invalid")
            return False
        except Exception as exc:  # never let a reload kill the worker
            self.failures += 1
            self.last_error = type(exc).__name__
            log.exception(
                "configuration reload failed; the running configuration stays in force",
                extra={"fields": {"reason": reason, "file": str(self.config_path)}},
            )
            self._report("error")
            return False
        changes = describe_changes(self.current, new)
        restart = restart_needed(self.current, new)
        self.current = new
        self.reloads += 1
        self.last_error = None
        fields: dict[str, Any] = {
            "reason": reason,
            "file": str(self.config_path),
            "keystores": changes,
            "pid": os.getpid(),
        }
        if restart:
            fields["needsRestart"] = restart
        log.info("configuration reloaded", extra={"fields": fields})
        if restart:
            log.warning(
                "configuration sections changed that only apply after a restart",
                extra={"fields": {"sections": restart}},
            )
        self._report("ok")
        return True

    def _report(self, result: str) -> None:
        if self._on_result is not None:
            with contextlib.suppress(Exception):
                self._on_result(result)

    # -- asyncio integration --------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if self._sighup:
                self._sighup = False
                self._sig = signature(self.config_path)
                self.reload_now("SIGHUP")
                continue
            self.check()  # a few stat() calls: cheap enough for the loop thread

    def _on_sighup(self) -> None:
        self._sighup = True
        if self._task is not None:
            loop = self._task.get_loop()
            loop.call_soon(self._sighup_now)

    def _sighup_now(self) -> None:
        if self._sighup:
            self._sighup = False
            self._sig = signature(self.config_path)
            self.reload_now("SIGHUP")

    def start(self) -> None:
        """Start polling on the running loop and take SIGHUP (main thread only)."""
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self.run(), name="xksproxy-reload")
        with contextlib.suppress(RuntimeError, ValueError, NotImplementedError):
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)


# -- launcher side ---------------------------------------------------------------------------
def prepare_parent() -> Path:
    """Create the reload trigger file and export it to workers (call before starting them)."""
    existing = environment.RELOAD_FILE.get()
    if existing and Path(existing).exists():
        return Path(existing)
    fd, name = tempfile.mkstemp(prefix="xksproxy-reload-")
    os.close(fd)
    os.environ[environment.RELOAD_FILE.name] = name
    atexit.register(lambda: Path(name).unlink(missing_ok=True))
    return Path(name)


def request_reload(*_args: object) -> None:
    """Ask every worker to reload (usable directly as a signal handler in the launcher).

    Under systemd (``ExecReload`` sends SIGHUP) it reports ``RELOADING=1`` and then ``READY=1``
    once the trigger is written: each worker applies the change within its poll interval, and a
    refused file keeps the running configuration, so the service is ready throughout.
    """
    trigger = environment.RELOAD_FILE.get()
    if not trigger:
        return
    from xksproxy.runtime import sdnotify

    sdnotify.reloading()
    with contextlib.suppress(OSError):
        Path(trigger).write_text(f"{time.time_ns()}\n")
    sdnotify.ready("configuration reload requested")


# -- wiring into the app ---------------------------------------------------------------------
def install(
    app: Any, config_path: Path | None, *, interval_s: float = 1.0, quotas: Any = None
) -> Reloader | None:
    """Reload ``app``'s key stores (and ``quotas``) when ``config_path`` changes."""
    if config_path is None:
        return None
    from xksproxy.observe import metrics

    def apply(new: Config) -> None:
        pools = getattr(app, "pools", None) or {}
        known = set(pools) or {h.name for h in app.config.hsms}
        for store in new.keystores:
            if store.hsm not in known:
                raise ConfigError(
                    f"keystore {store.name!r}: hsm {store.hsm!r} is not running in this process "
                    "(adding an [[hsm]] needs a restart)"
                )
        app.replace_keystores(new)
        if quotas is not None:
            from xksproxy.service.quotas import specs_from_config

            quotas.update(specs_from_config(new))

    reloader = Reloader(
        Path(config_path),
        app.config,
        apply,
        interval_s=interval_s,
        on_result=metrics.config_reloaded,
    )

    async def start() -> None:
        reloader.start()

    async def stop() -> None:
        await reloader.stop()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    return reloader
