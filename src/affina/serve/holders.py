"""The models a server holds, one way per `Sharing` kind, and what to generate each target with.

- the base model, loaded once;
- LoRA-family adapters (`PEFT_ADAPTER`): loaded side by side into one PeftModel over the base,
  at most `max_adapters` of them (LRU); a batch of one adapter activates it, a batch of several
  adapters and the base runs them in one forward pass (`activate_mixed`), with the adapters'
  matrices stacked (`lora_rows.StackedLoraRows`), or with PEFT's `adapter_names` for adapters
  stacking does not cover;
- wrappers of the base (`WRAPS_BASE`: few-shot, a frozen head): the run's method wraps the
  server's base without changing it; at most `max_adapters` of them (LRU);
- runs that change the base's modules or weights (`OWN_COPY`): opened with their own copy of the
  base, as `affina generate` opens them; at most `max_models` of them (LRU), so memory grows by
  up to `max_models` base models.

Only the engine's worker thread calls `activate`, so no two requests ever share module state.
`tokenizer` and `stops` are also called from request threads: they only read and cache.
"""

from __future__ import annotations

import gc
import json
import threading
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.tokenize import stop_token_ids, template_sha256
from ..methods import Sharing
from ..models import LoadedModel
from ..record import artifact_version
from .lora_rows import StackedLoraRows
from .store import ServedRun, UnservableModel

__all__ = ["Active", "ModelHolder"]


@dataclass
class Active:
    """What the worker generates a target with."""

    model: Any
    context: Any  # entered around generate: computes with the target's weights only
    version: str | None  # sha256 prefix of the run's artifact; None for the base
    kwargs: dict = field(default_factory=dict)  # for the forward/generate: PEFT's `adapter_names`


@dataclass
class _Held:
    stamp: tuple[int, int]
    version: str
    model: Any = None  # the opened model (wrappers, own copies)
    internal_name: str = ""  # the PEFT adapter name (adapters: PEFT keys cannot hold '.')


_UNKNOWN = "\0unknown"  # not an adapter name: the next use sets the LoRA layers' state again


def _stamp(artifact_dir: Path) -> tuple[int, int]:
    """Newest mtime and total size of the artifact's files: changes when it is rewritten."""
    files = [p for p in artifact_dir.rglob("*") if p.is_file()]
    return (max((p.stat().st_mtime_ns for p in files), default=0), sum(p.stat().st_size for p in files))


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else repr(e)


class ModelHolder:
    def __init__(self, base: LoadedModel, *, max_adapters: int = 8, max_models: int = 2,
                 dtype: str | None = None):
        self.base, self.dtype = base, dtype
        self.max_adapters, self.max_models = max_adapters, max_models
        self.base_template = template_sha256(base.tokenizer)
        self.base_stops = stop_token_ids(base.tokenizer, base.model.generation_config)
        self._peft = None  # the PeftModel, created when the first adapter is loaded
        self._stacked = None  # StackedLoraRows over it
        # The adapter PEFT's own path computes with in the PeftModel's LoRA layers, or None: none
        # (the base alone, which is where stacked rows add their updates); _UNKNOWN after a
        # failed load.
        self._peft_active: str | None = None
        self._adapters: OrderedDict[str, _Held] = OrderedDict()
        self._wrappers: OrderedDict[str, _Held] = OrderedDict()
        self._copies: OrderedDict[str, _Held] = OrderedDict()
        self._counter = 0
        self._lock = threading.Lock()  # guards the tokenizer/stop caches (request threads)
        self._tokenizers: dict[tuple, Any] = {}
        self._stops: dict[tuple, list[int]] = {}
        self._dora: dict[tuple, bool] = {}
        self.loaded_adapters: tuple[str, ...] = ()  # snapshots, replaced whole: safe to read anywhere
        self.loaded_models: tuple[str, ...] = ()

    # -- tokenizer and stop rule (any thread) ----------------------------------------------

    def tokenizer(self, run: ServedRun | None):
        """The tokenizer that renders and decodes `run`'s text: the base's, unless the run was
        trained with another chat template; then its own (saved with its artifact), so it is
        prompted exactly as in training and as `affina generate` prompts it."""
        template = run.record.template if run is not None else None
        if template is None or not template.sha256 or template.sha256 == self.base_template:
            return self.base.tokenizer
        return self._run_tokenizer(run) or self.base.tokenizer

    @staticmethod
    def _key(run: ServedRun) -> tuple:
        # The record is re-read on every request: a run retrained in place gets fresh entries.
        template = run.record.template
        return (run.artifact_dir, template.sha256 if template else None,
                tuple(template.stop_token_ids) if template else ())

    def _run_tokenizer(self, run: ServedRun):
        from ..data.tokenize import ensure_chat_template
        from ..runs import run_tokenizer

        key = self._key(run)
        with self._lock:
            if key not in self._tokenizers:
                tokenizer = run_tokenizer(run.artifact_dir)
                if tokenizer is not None:
                    ensure_chat_template(tokenizer)
                self._tokenizers[key] = tokenizer
            return self._tokenizers[key]

    def stops(self, run: ServedRun | None) -> list[int]:
        """THE stop rule (`affina.runs.run_stop_ids`), the token set `affina generate` uses."""
        if run is None:
            return self.base_stops
        from ..runs import run_stop_ids

        key = self._key(run)
        if key not in self._stops:  # the tokenizer `open_model` would give the run
            tokenizer = self._run_tokenizer(run) or self.base.tokenizer
            stops = run_stop_ids(run.record, tokenizer, self.base.model.generation_config)
            with self._lock:
                self._stops[key] = stops
        return self._stops[key]

    def mixable(self, run: ServedRun | None) -> bool:
        """Whether `run`'s rows may share a forward pass with other adapters' rows and the base's.

        PEFT mixes LoRA and rsLoRA adapters in one batch (each row names its adapter), but refuses
        DoRA there ("Cannot pass `adapter_names` when DoRA is enabled", peft 0.21): the weight
        norm DoRA divides by belongs to one adapter. DoRA runs keep batches of their own."""
        if run is None:
            return True
        if run.sharing is not Sharing.PEFT_ADAPTER:
            return False
        key = self._key(run)
        if key not in self._dora:
            try:
                config = json.loads((run.artifact_dir / "adapter_config.json").read_text())
                dora = bool(config.get("use_dora")) or config.get("peft_type") != "LORA"
            except (OSError, ValueError, AttributeError):
                dora = True  # unreadable: batched alone, and loading it reports why
            with self._lock:
                self._dora[key] = dora
        return not self._dora[key]

    @property
    def has_peft(self) -> bool:
        """Whether the PeftModel exists, i.e. the base's rows can run in it as `__base__`."""
        return self._peft is not None

    # -- models (the worker thread only) ---------------------------------------------------

    def load_rows(self, runs: list[ServedRun | None]) -> tuple[list[str], list[str | None]]:
        """The PEFT adapter name of each row ("__base__" for the base) and each row's artifact
        version, for rows of different adapters to run in one forward pass.

        Every adapter of the batch is loaded (or touched) first. A batch holds at most
        `max_adapters` distinct adapters, and each one touched becomes the most recently used, so
        loading a later one of the batch never evicts an earlier one."""
        held = {}
        for run in runs:
            if run is not None and run.name not in held:
                held[run.name] = self._adapter(run)
        gone = [name for name, h in held.items() if self._adapters.get(name) is not h]
        if gone:  # the engine caps a batch's adapters, so this is a bug, never a wrong answer
            raise RuntimeError(f"adapters {gone} were evicted while their batch was loading")
        names = [held[r.name].internal_name if r is not None else "__base__" for r in runs]
        versions = [held[r.name].version if r is not None else None for r in runs]
        return names, versions

    def activate_mixed(self, runs: list[ServedRun | None]) -> tuple[Active, list[str], list[str | None]]:
        """`load_rows`, and the model to run those rows with (`activate_rows`)."""
        names, versions = self.load_rows(runs)
        return self.activate_rows(names), names, versions

    def activate_rows(self, names: list[str]) -> Active:
        """The PeftModel for rows already loaded by `load_rows` and named by it, without
        touching the adapters on disk (once per decoding step).

        Plain LoRA/rsLoRA adapters run stacked (`StackedLoraRows`): two matmuls per layer for any
        mix of them and the base. Other adapters run on PEFT's own path: rows of one adapter with
        it set active, rows of several with PEFT's per-row `adapter_names` (returned in
        `Active.kwargs`; one pass per adapter in every layer)."""
        if set(names) == {"__base__"}:
            self._no_own_adapter()
            return Active(self._peft, nullcontext(), None)
        if self._stacked.unsupported(names) is None:
            self._no_own_adapter()
            return Active(self._peft, self._stacked.rows(names), None)
        if len(set(names)) == 1:
            if self._peft_active != names[0]:  # set_adapter walks every module: not every step
                self._peft.set_adapter(names[0])
                self._peft_active = names[0]
            return Active(self._peft, nullcontext(), None)
        return Active(self._peft, nullcontext(), None, {"adapter_names": list(names)})

    def _no_own_adapter(self) -> None:
        """The PeftModel's LoRA layers compute the base alone (stacked rows add their updates)."""
        if self._peft_active is not None:
            self._stacked.no_adapter()
            self._peft_active = None

    def _base_context(self):
        """The shared base as it was loaded: with any LoRA layers of other adapters switched off."""
        if self._peft is not None:
            self._no_own_adapter()
        return nullcontext()

    def activate(self, run: ServedRun | None) -> Active:
        if run is None:
            return Active(self._peft or self.base.model, self._base_context(), None)
        if run.sharing is Sharing.PEFT_ADAPTER:
            held = self._adapter(run)
            active = self.activate_rows([held.internal_name])
            active.version = held.version
            return active
        if run.sharing is Sharing.WRAPS_BASE:
            held = self._opened(run, self._wrappers, self.max_adapters, shared=True)
            # The wrapper calls the shared base, which may carry other runs' LoRA layers.
            return Active(held.model, self._base_context(), held.version)
        held = self._opened(run, self._copies, self.max_models, shared=False)
        self.loaded_models = tuple(self._copies)
        return Active(held.model, nullcontext(), held.version)

    def _opened(self, run: ServedRun, cache: OrderedDict, limit: int, shared: bool) -> _Held:
        """`run` opened the way `affina generate` opens it: on the server's base (`shared`) or on
        its own copy of the base."""
        from ..runs import open_model

        stamp = _stamp(run.artifact_dir)
        held = cache.get(run.name)
        if held is not None and held.stamp == stamp:
            cache.move_to_end(run.name)
            return held
        cache.pop(run.name, None)
        try:
            if shared:
                opened = open_model(run.run_dir, base=self.base)
            else:
                opened = open_model(run.run_dir, device=str(self.base.device), dtype=self.dtype)
        except Exception as e:  # a broken artifact fails its own requests, never the server
            raise UnservableModel(f"model {run.name!r}: cannot open its {run.record.method.name} "
                                  f"artifact ({_first_line(e)})") from e
        held = _Held(stamp, artifact_version(run.artifact_dir), opened.model)
        cache[run.name] = held
        while len(cache) > limit:
            cache.popitem(last=False)
            gc.collect()  # an own copy is a whole model: hand its memory back now
        return held

    def _adapter(self, run: ServedRun) -> _Held:
        stamp = _stamp(run.artifact_dir)
        cached = self._adapters.get(run.name)
        if cached is not None and cached.stamp == stamp:
            self._adapters.move_to_end(run.name)
            return cached
        self._counter += 1
        internal = f"adapter{self._counter}"
        try:
            if self._peft is None:
                from peft import PeftModel

                self._peft = PeftModel.from_pretrained(self.base.model, str(run.artifact_dir),
                                                       adapter_name=internal)
                self._stacked = StackedLoraRows(self._peft)
            else:
                self._peft.load_adapter(str(run.artifact_dir), adapter_name=internal)
        except Exception as e:  # e.g. a SafetensorError for corrupt weights: fails its own requests
            if self._peft is not None:  # it may have left a half-loaded adapter, maybe active
                if internal in self._peft.peft_config:
                    self._peft.delete_adapter(internal)
                self._peft_active = _UNKNOWN
                self._stacked.forget()
            raise UnservableModel(f"model {run.name!r}: cannot load its adapter from "
                                  f"{run.artifact_dir} ({_first_line(e)})") from e
        self._peft.eval()
        if cached is not None:  # the weights changed on disk since they were loaded
            self._peft.delete_adapter(self._adapters.pop(run.name).internal_name)
        held = _Held(stamp, artifact_version(run.artifact_dir), internal_name=internal)
        self._adapters[run.name] = held
        self._peft.set_adapter(internal)  # so deleting the previously active one moves nothing
        # Evict after loading, so the PEFT model never has zero adapters in between.
        while len(self._adapters) > self.max_adapters:
            _, oldest = self._adapters.popitem(last=False)
            self._peft.delete_adapter(oldest.internal_name)
        self._peft_active = internal
        self._stacked.forget()  # stacked again, with the new adapter and without the evicted
        self.loaded_adapters = tuple(self._adapters)
        return held
