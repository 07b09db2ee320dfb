"""Registered versions for the server, resolved without redoing the slow parts on every request.

Resolving `NAME@ALIAS` asks MLflow which version the alias points at, then checks the version's
files against the hashes recorded at registration (tens of MB read per request). Here:

- the alias (or version) lookup is kept for `ttl` seconds, so moving an alias still rolls out
  within seconds, while a burst of requests costs one registry query;
- the hash check is kept for as long as none of the version's files changed (path, size, mtime,
  ctime, inode), so the files are re-read once per change, not once per request. A tampered
  version is remembered as refused in the same way, so asking for it again costs a stat, not a
  re-hash.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

from ..errors import AffinaError
from ..govern.registry import (TAG_HASHES, ModelRef, RegisteredVersion, file_stamps, lookup,
                               verify_hashes)

__all__ = ["RegistryResolver", "DEFAULT_TTL"]

DEFAULT_TTL = 2.0
_MAX_ENTRIES = 1024  # names come from the network: a cap keeps junk lookups from piling up


class RegistryResolver:
    """Thread-safe: the server resolves from its thread pool."""

    def __init__(self, ttl: float = DEFAULT_TTL, clock: Callable[[], float] = time.monotonic):
        self.ttl, self._clock = ttl, clock
        self._lock = threading.Lock()
        # (name, selector) → (expires at, the version or the AffinaError the lookup raised)
        self._lookups: dict[tuple[str, str], tuple[float, RegisteredVersion | AffinaError]] = {}
        # (ref, run dir, recorded hashes, file stamps) → None when verified, else the refusal
        self._verified: dict[tuple, str | None] = {}

    def lookup(self, ref: ModelRef) -> RegisteredVersion:
        """The version `ref` names now (at most `ttl` seconds old); AffinaError when none."""
        key, now = (ref.name, ref.selector), self._clock()
        with self._lock:
            hit = self._lookups.get(key)
        if hit is None or hit[0] <= now:
            try:
                outcome: RegisteredVersion | AffinaError = lookup(ref)
            except AffinaError as e:  # unknown names are cached too: asking again is no cheaper
                outcome = e
            with self._lock:
                _bound(self._lookups, lambda v: v[0] <= now)
                self._lookups[key] = (now + self.ttl, outcome)
            hit = (0.0, outcome)
        if isinstance(hit[1], AffinaError):
            raise AffinaError(str(hit[1]))
        return hit[1]

    def verify(self, version: RegisteredVersion, ref_text: str) -> None:
        """Raise AffinaError when the version's files are not the ones registered."""
        expected = version.tags.get(TAG_HASHES, "{}")
        # Stamped before hashing: a file changed while it is hashed shows up on the next call.
        key = (ref_text, str(version.run_dir), expected, file_stamps(version.run_dir))
        with self._lock:
            if key in self._verified:
                refusal = self._verified[key]
                if refusal is None:
                    return
                raise AffinaError(refusal)
        try:
            verify_hashes(version.run_dir, json.loads(expected), ref_text)
            refusal = None
        except AffinaError as e:
            refusal = str(e)
        with self._lock:
            _bound(self._verified, lambda v: True)
            self._verified[key] = refusal
        if refusal is not None:
            raise AffinaError(refusal)


def _bound(cache: dict, stale: Callable) -> None:
    """Drop stale entries once the cache is full; everything, if that is not enough."""
    if len(cache) < _MAX_ENTRIES:
        return
    for k in [k for k, v in cache.items() if stale(v)]:
        del cache[k]
    if len(cache) >= _MAX_ENTRIES:
        cache.clear()
