"""openCryptoki's soft token (Debian ``opencryptoki``) as a second PKCS#11 implementation for tests.

Why test-only (tests/support, not hsm/ next to ``hsm/softhsm.py``): openCryptoki 3.8 (Debian 12)
keeps its soft token in ONE system-wide place fixed at build time (``/var/lib/opencryptoki/swtok``,
its shared memory ``/dev/shm/var.lib.opencryptoki.swtok``, slots from
``/etc/opencryptoki/opencryptoki.conf``, the slot daemon ``pkcsslotd`` on
``/var/run/pkcsslotd.socket``). Its one redirect, ``PKCS_APP_STORE``, is broken in 3.8: the
library then writes ``NVTOK.DAT`` and ``MK_SO`` into ``/`` (seen here; ``init_data_store`` sets
``pk_dir`` but leaves ``data_store`` empty). So a private, per-state-directory token as
``hsm.softhsm.provision`` makes is impossible, and taking over the system token is not something
``xksproxy init`` should do to an operator's machine.

What this does instead, and why it never touches an operator's token:

* :func:`claim` uses the system soft token only if it is **not initialised** (a fresh install) or
  carries our test label (the leftover of an interrupted run, see ``TEST_LABEL``); any other
  label means somebody uses it, and the caller gets :class:`Unavailable` with that reason (tests
  skip). Before touching it, the token directory's files are snapshotted (a few hundred bytes);
  :meth:`OckToken.restore` puts exactly those files back, so the token is "not initialised"
  again afterwards.
* One test session at a time: :func:`claim` holds an flock on ``SESSION_LOCK`` until
  :meth:`OckToken.restore` (or the process's end), and another session gets :class:`Unavailable`
  instead of mistaking the live token for a leftover.
* ``pkcsslotd`` is started only if none runs, and then stopped again by :meth:`OckToken.restore`
  (a daemon started by a session that crashed stays running; the next session just uses it).
* PKCS#11 provisioning (``C_InitToken``, ``C_InitPIN``, ``C_SetPIN``) runs in a child Python
  process with the PINs on its stdin (never argv, never logged), so the test process's own module
  instance is initialised only later, with OS locking, by ``hsm``.

openCryptoki specifics met here: PINs are 4-8 bytes (``ulMaxPinLen`` 8, so 8 hex digits), a fresh
token's SO PIN is ``87654321`` (changed at once to a random one), root must be in group
``pkcs11`` (the package adds it).
"""

from __future__ import annotations

import fcntl
import glob as _glob
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hsm import HsmConfig

# The Debian path has the multiarch triplet in it (x86_64-linux-gnu, aarch64-linux-gnu, ...).
MODULE = next(
    iter(sorted(_glob.glob("/usr/lib/*/pkcs11/libopencryptoki.so"))),
    "/usr/lib/x86_64-linux-gnu/pkcs11/libopencryptoki.so",
)
PKCSSLOTD = "/usr/sbin/pkcsslotd"
TOKEN_DIR = Path("/var/lib/opencryptoki/swtok")
SHM_DIR = Path("/dev/shm")
SHM_FILE = SHM_DIR / "var.lib.opencryptoki.swtok"
SHM_GLOB = "var.lib.opencryptoki.*"  # the library also creates one per other stdll (tpm.root)
SLOTD_SOCKET = Path("/var/run/pkcsslotd.socket")
SLOTD_PIDFILE = Path("/var/run/pkcsslotd.pid")
TEST_LABEL = "xksproxy-ock-test"
# Held (flock) by the test session using the token: a second session on this machine must not
# take the TEST_LABEL token for an interrupted run's leftover and wipe it. Freed at exit/crash.
SESSION_LOCK = Path("/run/lock/xksproxy-ock-test.lock")
FACTORY_SO_PIN = "87654321"  # openCryptoki's documented default SO PIN of a fresh soft token


class Unavailable(Exception):
    """openCryptoki's soft token cannot be used here; ``str()`` says exactly why."""


@dataclass
class OckToken:
    """The claimed soft token: label, user PIN (repr hides it), and what to put back."""

    token_label: str
    user_pin: str = field(repr=False)
    so_pin: str = field(repr=False)
    module_path: str = MODULE
    _snapshot: dict[str, tuple[bytes, int, int, int]] = field(default_factory=dict, repr=False)
    _slotd_pid: int | None = None
    _shm_before: frozenset[str] = frozenset()
    _lock_fd: int | None = None

    def hsm_config(self, name: str = "ock-0", **overrides: object) -> HsmConfig:
        """An ``hsm.HsmConfig`` for this token (overrides: sessions, mode, ...)."""
        fields: dict[str, object] = {
            "name": name,
            "module": self.module_path,
            "token_label": self.token_label,
            "pin": self.user_pin,
        }
        fields.update(overrides)
        return HsmConfig(**fields)  # type: ignore[arg-type]

    def unlock_user_pin(self) -> None:
        """As SO, set the user PIN again (``C_InitPIN``): clears openCryptoki's lockout after
        three wrong user PINs (tests of that lockout call this in ``finally``)."""
        _child({"op": "init_pin", "so": self.so_pin, "user": self.user_pin})

    def restore(self) -> None:
        """Put the token directory back as found and stop the slot daemon if we started it."""
        _restore_dir(self._snapshot)
        SHM_FILE.unlink(missing_ok=True)
        for path in SHM_DIR.glob(SHM_GLOB):
            if path.name not in self._shm_before:
                path.unlink(missing_ok=True)
        if self._slotd_pid is not None:
            _stop_slotd(self._slotd_pid)
            self._slotd_pid = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None


# --------------------------------------------------------------------------- the child's part
# Run as ``python -c CHILD MODULE`` with JSON on stdin; prints one JSON object. Plain ctypes on
# the library's exported C_* symbols: python-pkcs11 has no C_InitToken, and this must not share a
# module instance with the test process.
CHILD = r"""
import ctypes, json, sys
from ctypes import c_ulong, c_char, byref, Structure, POINTER
class VER(Structure):
    _fields_ = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte)]
class TOKEN_INFO(Structure):
    _fields_ = [("label", c_char * 32), ("manufacturerID", c_char * 32), ("model", c_char * 16),
                ("serialNumber", c_char * 16), ("flags", c_ulong)] + [
                (n, c_ulong) for n in ("maxS", "s", "maxRW", "rw", "maxPin", "minPin",
                "totPub", "freePub", "totPriv", "freePriv")] + [
                ("hw", VER), ("fw", VER), ("utc", c_char * 16)]
lib = ctypes.CDLL(sys.argv[1])
req = json.load(sys.stdin)
def ck(name, *args):
    rv = getattr(lib, name)(*args)
    if rv:
        print(json.dumps({"error": f"{name} returned 0x{rv:x}"})); sys.exit(1)
ck("C_Initialize", None)
n = c_ulong(0)
ck("C_GetSlotList", ctypes.c_ubyte(1), None, byref(n))
slots = (c_ulong * max(n.value, 1))()
ck("C_GetSlotList", ctypes.c_ubyte(1), slots, byref(n))
found = None
for i in range(n.value):
    info = TOKEN_INFO()
    if lib.C_GetTokenInfo(slots[i], byref(info)) == 0 and info.model.startswith(b"IBM SoftTok"):
        found = (slots[i], info)
if found is None:
    print(json.dumps({"error": "no soft token slot (libpkcs11_sw.so) in the slot list"}))
    sys.exit(1)
slot, info = found
out = {"slot": slot, "label": info.label.decode().rstrip(), "flags": info.flags,
       "max_pin": info.maxPin, "min_pin": info.minPin}
if req.get("op") == "init_pin":
    so, user = req["so"].encode(), req["user"].encode()
    h = c_ulong(0)
    ck("C_OpenSession", c_ulong(slot), c_ulong(0x6), None, None, byref(h))  # RW | SERIAL
    ck("C_Login", h, c_ulong(0), so, c_ulong(len(so)))  # CKU_SO
    ck("C_InitPIN", h, user, c_ulong(len(user)))
    ck("C_Logout", h)
    ck("C_CloseSession", h)
if req.get("op") == "init":
    so_old, so_new, user = (p.encode() for p in (req["so_old"], req["so_new"], req["user"]))
    label = req["label"].encode().ljust(32, b" ")
    ck("C_InitToken", c_ulong(slot), so_old, c_ulong(len(so_old)), label)
    h = c_ulong(0)
    ck("C_OpenSession", c_ulong(slot), c_ulong(0x6), None, None, byref(h))  # RW | SERIAL
    ck("C_Login", h, c_ulong(0), so_old, c_ulong(len(so_old)))  # CKU_SO
    ck("C_InitPIN", h, user, c_ulong(len(user)))
    ck("C_SetPIN", h, so_old, c_ulong(len(so_old)), so_new, c_ulong(len(so_new)))
    ck("C_Logout", h)
    ck("C_CloseSession", h)
    info = TOKEN_INFO()
    ck("C_GetTokenInfo", c_ulong(slot), byref(info))
    out.update(label=info.label.decode().rstrip(), flags=info.flags)
lib.C_Finalize(None)
print(json.dumps(out))
"""

CKF_TOKEN_INITIALIZED = 0x400


def _child(request: dict[str, object]) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, MODULE],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        answer: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise Unavailable(
            f"openCryptoki probe failed (exit {proc.returncode}): {proc.stderr.strip()[-400:]}"
        ) from None
    if "error" in answer:
        raise Unavailable(f"openCryptoki: {answer['error']}")
    return answer


# --------------------------------------------------------------------------- daemon and files
def _slotd_pid() -> int | None:
    """pid of the running pkcsslotd (its pid file, checked against /proc), else None.

    Deliberately not a connect() to its socket: pkcsslotd 3.8 writes the slot table to every
    client at once, and a client that closes first kills it with SIGPIPE (seen here)."""
    try:
        pid = int(SLOTD_PIDFILE.read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    return pid if comm == "pkcsslotd" and SLOTD_SOCKET.exists() else None


def _start_slotd() -> int:
    """Start pkcsslotd (it daemonises itself) and return the pid it records."""
    if os.geteuid() != 0:
        raise Unavailable("pkcsslotd is not running and only root may start it")
    proc = subprocess.run([PKCSSLOTD], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise Unavailable(f"pkcsslotd failed (exit {proc.returncode}): {proc.stderr.strip()}")
    for _ in range(100):
        pid = _slotd_pid()
        if pid is not None:
            return pid
        time.sleep(0.05)
    raise Unavailable(f"pkcsslotd started but {SLOTD_SOCKET} does not answer")


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, e.g. a daemon reparented to a non-reaping init, is
    dead for us)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _stop_slotd(pid: int) -> None:
    """SIGTERM the pkcsslotd we started. It ignores SIGTERM while a process still has the
    library initialised (seen here), and this one does (hsm never finalises openCryptoki): then
    a detached shell waits for this process to exit and sends SIGTERM again, by pid."""
    os.kill(pid, signal.SIGTERM)
    for _ in range(20):
        if not _alive(pid):
            return
        time.sleep(0.05)
    script = f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 0.2; done; kill {pid}"
    # The shell backgrounds the loop and exits at once (no child left for us to reap).
    subprocess.run(
        ["/bin/sh", "-c", f"({script}) </dev/null >/dev/null 2>&1 &"],
        start_new_session=True,
        check=False,
        timeout=10,
    )


def _snapshot_dir() -> dict[str, tuple[bytes, int, int, int]]:
    """Every file under TOKEN_DIR: (content, mode, uid, gid) by relative path."""
    snap = {}
    for path in TOKEN_DIR.rglob("*"):
        if path.is_file():
            st = path.stat()
            rel = str(path.relative_to(TOKEN_DIR))
            snap[rel] = (path.read_bytes(), st.st_mode, st.st_uid, st.st_gid)
    return snap


def _restore_dir(snapshot: dict[str, tuple[bytes, int, int, int]]) -> None:
    """Make TOKEN_DIR's files exactly ``snapshot`` again (remove ours, rewrite the others)."""
    for path in sorted(TOKEN_DIR.rglob("*"), reverse=True):
        if path.is_file() and str(path.relative_to(TOKEN_DIR)) not in snapshot:
            path.unlink()
    for rel, (data, mode, uid, gid) in snapshot.items():
        target = TOKEN_DIR / rel
        tmp = target.with_name(target.name + ".restore")
        tmp.write_bytes(data)
        os.chown(tmp, uid, gid)
        os.chmod(tmp, mode & 0o7777)
        os.replace(tmp, target)


def _session_lock() -> int:
    """Take SESSION_LOCK without waiting; Unavailable if another live session holds it."""
    fd = os.open(SESSION_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise Unavailable(
            f"another test session (pid {holder}) is using the openCryptoki soft token"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def claim() -> OckToken:
    """Initialise the system soft token for this test session (see the module docstring)."""
    for path in (MODULE, PKCSSLOTD):
        if not Path(path).exists():
            raise Unavailable(f"{path} missing: install Debian package opencryptoki")
    if os.geteuid() != 0:
        raise Unavailable(
            f"the soft token is system-wide ({TOKEN_DIR}, root:pkcs11 0770): only root may set it "
            "up and put it back"
        )
    if not TOKEN_DIR.is_dir():
        raise Unavailable(f"{TOKEN_DIR} missing: reinstall Debian package opencryptoki")
    lock_fd = _session_lock()
    try:
        token = _claim_locked()
    except BaseException:
        os.close(lock_fd)
        raise
    token._lock_fd = lock_fd
    return token


def _claim_locked() -> OckToken:
    shm_before = frozenset(p.name for p in SHM_DIR.glob(SHM_GLOB))
    snapshot = _snapshot_dir()  # before our first C_Initialize, which writes NVTOK.DAT/MK_SO
    started = None if _slotd_pid() is not None else _start_slotd()
    try:
        state = _child({})
        label = str(state["label"])
        initialised = int(str(state["flags"])) & CKF_TOKEN_INITIALIZED
        if initialised and label != TEST_LABEL:
            raise Unavailable(
                f"the system openCryptoki soft token is initialised (label {label!r}): "
                "it may be an operator's, so the tests leave it alone"
            )
        if initialised:
            # Our label: the leftover of an interrupted run (PINs lost with its tmp dir). Its
            # files are ours; removing them all returns the token to "fresh install".
            snapshot = {}
            _restore_dir(snapshot)
            SHM_FILE.unlink(missing_ok=True)
        pin_len = min(int(str(state["max_pin"])), 8)
        so_old = FACTORY_SO_PIN
        user_pin = secrets.token_hex(pin_len // 2)
        so_pin = secrets.token_hex(pin_len // 2)
        request = {
            "op": "init",
            "label": TEST_LABEL,
            "so_old": so_old,
            "so_new": so_pin,
            "user": user_pin,
        }
        token = OckToken(
            TEST_LABEL,
            user_pin,
            so_pin,
            _snapshot=snapshot,
            _slotd_pid=started,
            _shm_before=shm_before,
        )
        try:
            _child(request)
        except BaseException:
            token.restore()
            raise
        return token
    except BaseException:
        if started is not None:
            _stop_slotd(started)
        raise
