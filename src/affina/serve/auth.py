"""API keys: created once and shown once, stored only as salted hashes, each with a model allow-list.

A key reads `aff-<key id>-<secret>`. The key id is public (it goes into the request log and into
`affina keys list`); the secret is 32 random bytes, stored as sha256(salt + secret) with a per-key
salt. A fast hash is enough here because the secret is random, not a password a person chose.
Keys live in `$AFFINA_HOME/serve/keys.db` (sqlite, created 0600).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..errors import AffinaError
from ..paths import affina_home, private_file

__all__ = ["ApiKey", "KeyStore", "default_keys_path", "ALL_MODELS"]

ALL_MODELS = "*"
_PREFIX = "aff"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id      TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    salt        TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    models      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT,
    admin       INTEGER NOT NULL DEFAULT 0
)
"""


def default_keys_path() -> Path:
    return affina_home() / "serve" / "keys.db"


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    models: tuple[str, ...]
    created_at: str
    revoked_at: str | None
    admin: bool = False  # sees and manages every key's files, jobs and fine-tuned models

    def allows(self, model: str) -> bool:
        return ALL_MODELS in self.models or model in self.models


def _hash(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode("utf-8")).hexdigest()


class KeyStore:
    def __init__(self, path: Path | str | None = None):
        self.path = Path(path) if path else default_keys_path()
        private_file(self.path)  # 0600: key hashes and allow-lists are nobody else's business
        with self._connect() as conn:
            conn.execute(_SCHEMA)
            columns = {row["name"] for row in conn.execute("PRAGMA table_info(api_keys)")}
            if "admin" not in columns:  # a key file from before admin keys
                conn.execute("ALTER TABLE api_keys ADD COLUMN admin INTEGER NOT NULL DEFAULT 0")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # One short-lived connection per call: the server's threads and `affina keys` in another
        # process can then all use the file safely.
        conn = sqlite3.connect(self.path, timeout=10)
        conn.row_factory = sqlite3.Row
        try:
            with conn:  # commits, or rolls back on error
                yield conn
        finally:
            conn.close()

    def create(self, name: str, models: list[str], *, admin: bool = False) -> tuple[ApiKey, str]:
        """A new key and its plaintext, which is shown once and never stored. An `admin` key sees
        every key's files, jobs and fine-tuned models; any other key only its own."""
        models = [m.strip() for m in models if m.strip()]
        if not models:
            raise AffinaError("--models: give at least one model name, or '*' for every model")
        key_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_hex(16)
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self._connect() as conn:
            conn.execute("INSERT INTO api_keys (key_id, name, salt, secret_hash, models, created_at, "
                         "revoked_at, admin) VALUES (?, ?, ?, ?, ?, ?, NULL, ?)",
                         (key_id, name, salt, _hash(salt, secret), json.dumps(models), now, int(admin)))
        return ApiKey(key_id, name, tuple(models), now, None, admin), f"{_PREFIX}-{key_id}-{secret}"

    def list(self, include_revoked: bool = True) -> list[ApiKey]:
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM api_keys ORDER BY created_at, key_id").fetchall()
        keys = [self._key(r) for r in rows]
        return keys if include_revoked else [k for k in keys if k.revoked_at is None]

    def revoke(self, key_id: str) -> ApiKey:
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
            if row is None:
                raise AffinaError(f"no API key with id {key_id!r}: `affina keys list` shows the ids")
            if row["revoked_at"] is None:
                conn.execute("UPDATE api_keys SET revoked_at = ? WHERE key_id = ?", (now, key_id))
        return self._key(row) if row["revoked_at"] else ApiKey(**{**self._key(row).__dict__,
                                                                  "revoked_at": now})

    def has_active_keys(self) -> bool:
        with self._connect() as conn:
            return conn.execute("SELECT 1 FROM api_keys WHERE revoked_at IS NULL LIMIT 1").fetchone() is not None

    def verify(self, key: str) -> ApiKey | None:
        """The active key that `key` is, or None. Looked up on every request, so a revocation
        takes effect at once."""
        parts = key.split("-", 2)
        if len(parts) != 3 or parts[0] != _PREFIX:
            return None
        _, key_id, secret = parts
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM api_keys WHERE key_id = ? AND revoked_at IS NULL",
                               (key_id,)).fetchone()
        if row is None or not hmac.compare_digest(row["secret_hash"], _hash(row["salt"], secret)):
            return None
        return self._key(row)

    @staticmethod
    def _key(row: sqlite3.Row) -> ApiKey:
        return ApiKey(row["key_id"], row["name"], tuple(json.loads(row["models"])), row["created_at"],
                      row["revoked_at"], bool(row["admin"]))
