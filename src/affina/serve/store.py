"""The model store: served model names → run directories, and nothing outside the store.

A served name is either the base model's name or the name of a run directory directly inside the
store. Names come from the network, so they are checked before they touch the file system: one
path component of safe characters, and the resolved directory (symlinks followed) must still lie
inside the store.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AffinaError
from ..methods import Method, Sharing
from ..record import MANIFEST_NAME, RunRecord, read_record

__all__ = ["ServedRun", "StoreScan", "ModelStore", "StoreError", "InvalidModelName", "UnknownModel",
           "UnservableModel", "check_model_name"]

# One path component: no separators, no leading dot (so no "." / ".." / hidden entries). Always
# used with fullmatch: `$` would also accept a trailing newline.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")


class StoreError(AffinaError):
    """A model name that the store refuses; `status` is the HTTP status the API answers with."""

    status = 400
    code = "invalid_model"


class InvalidModelName(StoreError):
    status, code = 400, "invalid_model_name"


class UnknownModel(StoreError):
    status, code = 404, "model_not_found"


class UnservableModel(StoreError):
    """A run that exists but cannot be served (other base, unknown method, broken record or
    artifact)."""

    status, code = 400, "model_not_servable"


@dataclass(frozen=True)
class ServedRun:
    """A servable run: its method is known and its artifact directory is inside the run."""

    name: str
    run_dir: Path
    artifact_dir: Path
    record: RunRecord
    method: Method = field(repr=False, compare=False)
    sharing: Sharing = Sharing.OWN_COPY

    @property
    def base_spec(self) -> str:
        return self.record.base_model.spec

    @property
    def base_fingerprint(self) -> str | None:
        return self.record.base_model.fingerprint


def check_model_name(name: str) -> str:
    """`name` itself if it is a safe single path component, else InvalidModelName."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise InvalidModelName(f"model {name!r} is not a valid model name: use the name of a run "
                               "directory in the model store (letters, digits, '.', '_', '+', '-')")
    return name


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


class ModelStore:
    """Run directories under `root` (default `./runs`), looked up by name on every request, so a
    run added while the server runs is served without a restart."""

    def __init__(self, root: Path | str, *, registry_ttl: float | None = None):
        """`registry_ttl`: seconds a registry alias lookup is reused (default 2)."""
        from .registry_cache import DEFAULT_TTL, RegistryResolver

        self._registry = RegistryResolver(DEFAULT_TTL if registry_ttl is None else registry_ttl)
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise AffinaError(f"model store {self.root} is not a directory: pass --store DIR, the "
                              "directory that holds your run directories (train.output_dir)")
        self._real_root = self.root.resolve()
        # Resolves `ft:...` names (fine-tuning jobs' results) when the jobs API is on:
        # a callable (store, name) -> ServedRun, set by serve/jobs_api.py.
        self.fine_tuned = None

    def resolve(self, name: str) -> ServedRun:
        """The run called `name`, checked to be a LoRA adapter run inside the store; or a
        registered `NAME@VERSION` / `NAME@ALIAS`, resolved on every request (so moving an alias
        rolls out or back within seconds, without a restart) with its files verified against
        their hashes (once per change of the files; see registry_cache.py)."""
        from ..govern.registry import parse_ref

        if isinstance(name, str) and name.startswith("ft:") and self.fine_tuned is not None:
            return self.fine_tuned(self, name)
        if isinstance(name, str) and parse_ref(name) is not None:
            return self._resolve_registered(name)
        check_model_name(name)
        run_dir = self.root / name
        if not run_dir.exists():
            raise UnknownModel(f"model {name!r} does not exist: GET /v1/models lists the models served")
        real = run_dir.resolve()
        # A symlink inside the store must not lead out of it.
        if not _inside(real, self._real_root) or real == self._real_root:
            raise InvalidModelName(f"model {name!r} points outside the model store; refused")
        if not (real / MANIFEST_NAME).is_file():
            raise UnknownModel(f"model {name!r} is not a run (no {MANIFEST_NAME} in it)")
        return self._served_run(name, real)

    def _resolve_registered(self, ref: str) -> ServedRun:
        # Only through the registry: a directory called `NAME@1` in the store or the current
        # directory is never looked at, so it cannot stand in for the registered version.
        from ..govern.registry import parse_ref

        parsed = parse_ref(ref)
        try:
            version = self._registry.lookup(parsed)
        except AffinaError as e:  # unknown name, version or alias
            raise UnknownModel(str(e)) from None
        try:
            self._registry.verify(version, str(parsed))
        except (AffinaError, OSError) as e:  # registered files changed or missing: never serve them
            raise UnservableModel(str(e)) from None
        # Named by the exact version, so the adapter cache never serves an alias's old target.
        return self._served_run(version.ref, version.run_dir.resolve())

    def served_run_at(self, name: str, run_dir: Path, artifact: str | None = None) -> ServedRun:
        """The run in `run_dir` served as `name`, optionally with another artifact directory of
        the run (a checkpoint's adapter, relative to the run); checked as `resolve` checks."""
        return self._served_run(name, Path(run_dir).resolve(), artifact)

    def _served_run(self, name: str, real: Path, artifact: str | None = None) -> ServedRun:
        try:
            return self._check_run(name, real, artifact)
        except AffinaError:
            raise
        except (TypeError, ValueError, AttributeError, KeyError, OSError) as e:
            # A record of the right shape with wrong types (`"artifact": 5`, `"method": null`),
            # or a file that vanished mid-check: one broken run must not break the listing.
            raise UnservableModel(f"model {name!r}: its run record or artifact is malformed "
                                  f"({type(e).__name__}: {e})") from None

    def _check_run(self, name: str, real: Path, artifact: str | None = None) -> ServedRun:
        from ..runs import method_of_record

        try:
            record = read_record(real)
        except AffinaError as e:  # a record this version cannot read: say why, never crash
            raise UnservableModel(f"model {name!r}: its run record is unreadable ({e})") from None
        artifact = artifact or record.artifact
        artifact_dir = (real / artifact).resolve()
        if not _inside(artifact_dir, real) or artifact_dir == real:
            raise InvalidModelName(f"model {name!r}: its artifact {artifact!r} points outside the run; refused")
        method_name = record.method.name
        if not artifact_dir.is_dir():
            raise UnservableModel(f"model {name!r} ({method_name} run) has no artifact directory "
                                  f"{artifact}/")
        try:
            method, cfg = method_of_record(record)
        except AffinaError as e:  # a method this version does not know, or options it refuses
            raise UnservableModel(f"model {name!r}: {e}") from None
        sharing = method.sharing(cfg)
        if sharing is Sharing.PEFT_ADAPTER:
            _check_lora_adapter(name, method_name, artifact, artifact_dir)
        return ServedRun(name=name, run_dir=real, artifact_dir=artifact_dir, record=record,
                         method=method, sharing=sharing)

    def run_names(self) -> list[str]:
        """Names of the entries in the store that look like runs (not yet checked further)."""
        return sorted(p.name for p in self.root.iterdir()
                      if _NAME.fullmatch(p.name) and (p / MANIFEST_NAME).is_file())

    def scan(self) -> "StoreScan":
        """Every run in the store: those that pass `resolve`, and the others with the reason."""
        scan = StoreScan()
        for name in self.run_names():
            try:
                scan.servable.append(self.resolve(name))
            except Exception as e:  # noqa: BLE001 — whatever one run's fault, list it, go on
                scan.unavailable.append((name, str(e) if isinstance(e, AffinaError)
                                         else f"{type(e).__name__}: {e}"))
        return scan

    def runs(self) -> list[ServedRun]:
        """The servable runs (`scan().unavailable` says why the others are not)."""
        return self.scan().servable


@dataclass
class StoreScan:
    servable: list[ServedRun] = field(default_factory=list)
    unavailable: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)


def _check_lora_adapter(name: str, method: str, artifact: str, artifact_dir: Path) -> None:
    """A shared-adapter run must hold the PEFT LoRA adapter the multi-adapter model loads."""
    config = artifact_dir / "adapter_config.json"
    if not config.is_file():
        raise UnservableModel(f"model {name!r} ({method} run) has no PEFT adapter in {artifact}/")
    try:
        peft_type = json.loads(config.read_text(encoding="utf-8")).get("peft_type")
    except (OSError, ValueError, AttributeError) as e:
        raise UnservableModel(f"model {name!r}: unreadable {artifact}/adapter_config.json ({e})") from None
    if peft_type != "LORA":
        raise UnservableModel(f"model {name!r} ({method} run) records a LoRA adapter, but "
                              f"{artifact}/adapter_config.json says {peft_type!r}")
