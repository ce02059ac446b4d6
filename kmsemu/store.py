"""The emulator's state in one SQLite file: settings, custom key stores, KMS keys, aliases.

Why SQLite: restarts must keep every key store, key and piece of KMS-side key material (losing
the material makes old ciphertext undecryptable, as in KMS), and every change must be atomic so a
crash never leaves a key without its material or an alias pointing nowhere. Each public method is
one transaction. The file holds secrets (proxy credentials, key material): it is created 0600 in
a 0700 directory.

The connection is shared by the event loop's thread only; calls are short (indexed lookups), so
running them inline is cheaper than a thread hop, and a lock guards against accidental sharing.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

DB_NAME = "kmsemu.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS key_stores (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    uri_endpoint TEXT NOT NULL,
    uri_path TEXT NOT NULL,
    connectivity TEXT NOT NULL,
    vpc_endpoint_service_name TEXT,
    access_key_id TEXT NOT NULL,
    secret TEXT NOT NULL,
    connection_state TEXT NOT NULL,
    connection_error_code TEXT,
    creation_date REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    arn TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    state TEXT NOT NULL,
    origin TEXT NOT NULL,
    key_store_id TEXT REFERENCES key_stores(id),
    xks_key_id TEXT,
    material BLOB NOT NULL,
    creation_date REAL NOT NULL,
    deletion_date REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS keys_xks ON keys(key_store_id, xks_key_id)
    WHERE xks_key_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT PRIMARY KEY,
    key_id TEXT NOT NULL REFERENCES keys(id),
    creation_date REAL NOT NULL,
    last_updated REAL NOT NULL
);
"""

# Column lists in dataclass field order (rows are unpacked positionally into the dataclasses).
_KS_SELECT = (
    "SELECT id, name, uri_endpoint, uri_path, connectivity, vpc_endpoint_service_name, "
    "access_key_id, secret, connection_state, connection_error_code, creation_date "
    "FROM key_stores"
)
_KEY_SELECT = (
    "SELECT id, arn, description, state, origin, key_store_id, xks_key_id, material, "
    "creation_date, deletion_date FROM keys"
)


@dataclass(frozen=True)
class KeyStore:
    """One external key store as KMS describes it (``secret`` never appears in ``repr``)."""

    id: str
    name: str
    uri_endpoint: str
    uri_path: str
    connectivity: str
    vpc_endpoint_service_name: str | None
    access_key_id: str
    secret: str
    connection_state: str  # CONNECTED | CONNECTING | DISCONNECTED | DISCONNECTING | FAILED
    connection_error_code: str | None
    creation_date: float

    def __repr__(self) -> str:
        return f"KeyStore(id={self.id!r}, name={self.name!r}, state={self.connection_state!r})"


@dataclass(frozen=True)
class Key:
    """One KMS key. ``material`` is the KMS-side key material (never logged, never returned)."""

    id: str
    arn: str
    description: str
    state: str  # Enabled | Disabled | PendingDeletion
    origin: str  # AWS_KMS | EXTERNAL_KEY_STORE
    key_store_id: str | None
    xks_key_id: str | None
    material: bytes
    creation_date: float
    deletion_date: float | None

    def __repr__(self) -> str:
        return f"Key(id={self.id!r}, state={self.state!r}, origin={self.origin!r})"


@dataclass(frozen=True)
class Alias:
    name: str
    key_id: str
    creation_date: float
    last_updated: float


class Conflict(Exception):
    """A uniqueness rule failed (name or URI in use, alias exists, XKS key already used)."""


class Store:
    """All state access. Methods raise :class:`Conflict` or return None for "not there"."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = state_dir / DB_NAME
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self.path = path
        self._next_purge = 0.0
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._lock:
            # executescript commits on its own; CREATE ... IF NOT EXISTS makes it idempotent.
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One atomic transaction (BEGIN IMMEDIATE: a second writer process waits, not fails)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ---- settings

    def get_setting(self, name: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM settings WHERE name=?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_settings(self, values: dict[str, str]) -> None:
        with self._tx() as db:
            db.executemany(
                "INSERT INTO settings(name, value) VALUES(?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                list(values.items()),
            )

    # ---- key stores

    _KS_COLS = (
        "id, name, uri_endpoint, uri_path, connectivity, vpc_endpoint_service_name, "
        "access_key_id, secret, connection_state, connection_error_code, creation_date"
    )

    def add_key_store(self, ks: KeyStore) -> None:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM key_stores WHERE name=?", (ks.name,)).fetchone():
                raise Conflict("CustomKeyStoreNameInUseException")
            self._check_uri(db, ks)
            db.execute(
                f"INSERT INTO key_stores({self._KS_COLS}) VALUES(?,?,?,?,?,?,?,?,?,?,?)",
                _ks_row(ks),
            )

    @staticmethod
    def _check_uri(db: sqlite3.Connection, ks: KeyStore) -> None:
        row = db.execute(
            "SELECT 1 FROM key_stores WHERE uri_endpoint=? AND uri_path=? AND id<>?",
            (ks.uri_endpoint, ks.uri_path, ks.id),
        ).fetchone()
        if row:
            raise Conflict("XksProxyUriInUseException")

    def key_store(self, ks_id: str) -> KeyStore | None:
        with self._lock:
            row = self._db.execute(_KS_SELECT + " WHERE id=?", (ks_id,)).fetchone()
        return None if row is None else KeyStore(*row)

    def key_store_by_name(self, name: str) -> KeyStore | None:
        with self._lock:
            row = self._db.execute(_KS_SELECT + " WHERE name=?", (name,)).fetchone()
        return None if row is None else KeyStore(*row)

    def key_stores(self) -> list[KeyStore]:
        with self._lock:
            rows = self._db.execute(_KS_SELECT + " ORDER BY creation_date, id").fetchall()
        return [KeyStore(*r) for r in rows]

    def update_key_store(self, ks: KeyStore) -> None:
        """Replace a key store's row (same id); uniqueness rules as for a new one."""
        with self._tx() as db:
            other = db.execute(
                "SELECT 1 FROM key_stores WHERE name=? AND id<>?", (ks.name, ks.id)
            ).fetchone()
            if other:
                raise Conflict("CustomKeyStoreNameInUseException")
            self._check_uri(db, ks)
            db.execute(
                "UPDATE key_stores SET name=?, uri_endpoint=?, uri_path=?, connectivity=?, "
                "vpc_endpoint_service_name=?, access_key_id=?, secret=?, connection_state=?, "
                "connection_error_code=?, creation_date=? WHERE id=?",
                (*_ks_row(ks)[1:], ks.id),
            )

    def set_connection(self, ks_id: str, state: str, error_code: str | None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE key_stores SET connection_state=?, connection_error_code=? WHERE id=?",
                (state, error_code, ks_id),
            )

    def delete_key_store(self, ks_id: str) -> None:
        """Delete a key store and the records of its already-deleted keys.

        The caller checks first that no live key uses it (CustomKeyStoreHasCMKsException)."""
        with self._tx() as db:
            db.execute("DELETE FROM key_stores WHERE id=?", (ks_id,))

    # ---- keys

    _KEY_COLS = (
        "id, arn, description, state, origin, key_store_id, xks_key_id, material, "
        "creation_date, deletion_date"
    )

    def add_key(self, key: Key) -> None:
        with self._tx() as db:
            if (
                key.xks_key_id is not None
                and db.execute(
                    "SELECT 1 FROM keys WHERE key_store_id=? AND xks_key_id=?",
                    (key.key_store_id, key.xks_key_id),
                ).fetchone()
            ):
                raise Conflict("XksKeyAlreadyInUseException")
            db.execute(
                f"INSERT INTO keys({self._KEY_COLS}) VALUES(?,?,?,?,?,?,?,?,?,?)",
                (
                    key.id,
                    key.arn,
                    key.description,
                    key.state,
                    key.origin,
                    key.key_store_id,
                    key.xks_key_id,
                    key.material,
                    key.creation_date,
                    key.deletion_date,
                ),
            )

    def key(self, key_id: str) -> Key | None:
        """A key by id, after purging it if its scheduled deletion date has passed."""
        self.purge_deleted()
        with self._lock:
            row = self._db.execute(_KEY_SELECT + " WHERE id=?", (key_id,)).fetchone()
        return None if row is None else Key(*row)

    def keys(self) -> list[Key]:
        self.purge_deleted()
        with self._lock:
            rows = self._db.execute(_KEY_SELECT + " ORDER BY creation_date, id").fetchall()
        return [Key(*r) for r in rows]

    def count_keys_in_store(self, ks_id: str) -> int:
        self.purge_deleted()
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM keys WHERE key_store_id=?", (ks_id,)
            ).fetchone()
        return int(row[0])

    def set_key_state(self, key_id: str, state: str, deletion_date: float | None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE keys SET state=?, deletion_date=? WHERE id=?",
                (state, deletion_date, key_id),
            )

    def purge_deleted(self, now: float | None = None) -> None:
        """Delete keys whose waiting period is over, with their aliases (as KMS does).

        Reads call this; it writes at most once a second (``now`` given: always), so lookups on
        the hot path of Encrypt/Decrypt stay reads. A second's lag on a 7-to-30-day wait is moot.
        """
        if now is None:
            now = time.time()
            if now < self._next_purge:
                return
            self._next_purge = now + 1.0
        with self._tx() as db:
            db.execute(
                "DELETE FROM aliases WHERE key_id IN (SELECT id FROM keys "
                "WHERE state='PendingDeletion' AND deletion_date<=?)",
                (now,),
            )
            db.execute(
                "DELETE FROM keys WHERE state='PendingDeletion' AND deletion_date<=?", (now,)
            )

    # ---- aliases

    def add_alias(self, alias: Alias) -> None:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM aliases WHERE name=?", (alias.name,)).fetchone():
                raise Conflict("AlreadyExistsException")
            db.execute(
                "INSERT INTO aliases(name, key_id, creation_date, last_updated) VALUES(?,?,?,?)",
                (alias.name, alias.key_id, alias.creation_date, alias.last_updated),
            )

    def alias(self, name: str) -> Alias | None:
        with self._lock:
            row = self._db.execute(
                "SELECT name, key_id, creation_date, last_updated FROM aliases WHERE name=?",
                (name,),
            ).fetchone()
        return None if row is None else Alias(*row)

    def aliases(self, key_id: str | None = None) -> list[Alias]:
        self.purge_deleted()
        query = "SELECT name, key_id, creation_date, last_updated FROM aliases"
        args: tuple[str, ...] = ()
        if key_id is not None:
            query += " WHERE key_id=?"
            args = (key_id,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY name", args).fetchall()
        return [Alias(*r) for r in rows]

    def update_alias(self, name: str, key_id: str, now: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE aliases SET key_id=?, last_updated=? WHERE name=?", (key_id, now, name)
            )

    def delete_alias(self, name: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM aliases WHERE name=?", (name,))


def _ks_row(ks: KeyStore) -> tuple[object, ...]:
    return (
        ks.id,
        ks.name,
        ks.uri_endpoint,
        ks.uri_path,
        ks.connectivity,
        ks.vpc_endpoint_service_name,
        ks.access_key_id,
        ks.secret,
        ks.connection_state,
        ks.connection_error_code,
        ks.creation_date,
    )


__all__ = ["DB_NAME", "Alias", "Conflict", "Key", "KeyStore", "Store", "replace"]
