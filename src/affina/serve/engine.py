"""Generation for many models over one base: adapters in a bounded LRU, one worker thread.

Why one worker: a PEFT model has one active adapter at a time, held in module state. Only the
worker thread ever touches the model, and it activates the adapter of each batch right before
generating it, so no request can run under another request's adapter. Requests wait in a bounded
queue; the worker takes the oldest one plus any waiting requests that can share its forward pass
(same adapter, greedy, same stop strings, not streamed), left-pads them into one batch and
generates them together.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from concurrent.futures import Future
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import AffinaError
from ..models import LoadedModel
from ..record import artifact_version as adapter_version
from .decoding import StopWhenCancelled, StreamDecoder, TokenStreamer, finish_text
from .store import ModelStore, ServedRun, UnservableModel

__all__ = ["GenerationParams", "GenerationResult", "Target", "Engine", "Overloaded", "BadPrompt"]


class Overloaded(AffinaError):
    """The request queue is full. The API answers 503."""


class BadPrompt(AffinaError):
    """Messages the chat template refuses. The API answers 400."""


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (eos or a stop string) or "length"
    adapter_version: str | None = None  # sha256 prefix of the adapter weights; None for the base


@dataclass(frozen=True)
class Target:
    """What a `model` name resolved to: the base (run None) or one adapter run."""

    name: str
    run: ServedRun | None = None


@dataclass
class _Job:
    target: Target
    prompt_ids: list[int]
    params: GenerationParams
    on_text: Callable[[str], None] | None = None  # streaming: called with each new piece of text
    future: Future = field(default_factory=Future)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def batch_key(self):
        if self.on_text is not None or not self.params.greedy:
            return None  # streamed or sampled requests run alone (their own RNG stream)
        return (self.target.name, self.params.stop)


@dataclass
class _Adapter:
    internal_name: str  # PEFT module keys cannot hold '.', run names can
    version: str
    stamp: tuple[int, int]


def _stamp(adapter_dir: Path) -> tuple[int, int]:
    files = sorted(adapter_dir.glob("adapter_model.*"))
    return (max((p.stat().st_mtime_ns for p in files), default=0), sum(p.stat().st_size for p in files))


class Engine:
    """The base model, its adapters and the worker that generates for every request."""

    def __init__(self, base: LoadedModel, base_name: str, store: ModelStore | None, *,
                 base_aliases: tuple[str, ...] = (), max_adapters: int = 8, max_queue: int = 64,
                 max_batch: int = 8, threads: int | None = None):
        if max_adapters < 1 or max_queue < 1 or max_batch < 1:
            raise AffinaError("--max-adapters, --max-queue and --max-batch must each be at least 1")
        self.base, self.base_name, self.store = base, base_name, store
        self.base_aliases = {base_name, *base_aliases}
        self.tokenizer = base.tokenizer
        self.max_adapters, self.max_queue, self.max_batch = max_adapters, max_queue, max_batch
        self.threads = threads
        self._peft = None  # the PeftModel, created when the first adapter is loaded
        self._adapters: OrderedDict[str, _Adapter] = OrderedDict()
        self._loaded_names: tuple[str, ...] = ()
        self._counter = 0
        self._jobs: deque[_Job] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self.batch_sizes: dict[int, int] = {}  # batch size → how many batches had it
        self._worker = threading.Thread(target=self._run, name="affina-generate", daemon=True)
        eos = base.model.generation_config.eos_token_id
        self._eos = set(eos if isinstance(eos, list) else [eos]) - {None}
        self._eos.add(self.tokenizer.eos_token_id)

    # -- request side (any thread) ---------------------------------------------------------

    def start(self) -> "Engine":
        self._worker.start()
        return self

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._worker.join(timeout=30)

    @property
    def ready(self) -> bool:
        return self._worker.is_alive() and not self._stopping

    def queue_depth(self) -> int:
        return len(self._jobs)

    def loaded_adapters(self) -> list[str]:
        return list(self._loaded_names)  # a snapshot the worker replaces whole: safe to read anywhere

    def served_runs(self) -> list[ServedRun]:
        return [r for r in (self.store.runs() if self.store else []) if self.base_matches(r)]

    def base_matches(self, run: ServedRun) -> bool:
        if run.base_fingerprint and self.base.fingerprint:
            return run.base_fingerprint == self.base.fingerprint
        return run.base_spec == self.base.spec

    def resolve(self, model: str) -> Target:
        if model in self.base_aliases:
            return Target(self.base_name)
        if self.store is None:
            from .store import UnknownModel

            raise UnknownModel(f"model {model!r} does not exist: this server serves {self.base_name!r} only")
        run = self.store.resolve(model)
        if not self.base_matches(run):
            raise UnservableModel(f"model {model!r} was trained on base {run.base_spec!r}, but this "
                                  f"server serves base {self.base.spec!r}; serve it with --base "
                                  f"{run.base_spec}")
        return Target(model, run)

    def chat_prompt_ids(self, messages: list[dict]) -> list[int]:
        from jinja2 import TemplateError

        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except TemplateError as e:  # e.g. a template that insists on alternating roles
            raise BadPrompt(f"the model's chat template cannot render these messages: {e}") from None
        # The template already wrote any BOS; adding special tokens again would double it.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def text_prompt_ids(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt)["input_ids"]

    def submit(self, target: Target, prompt_ids: list[int], params: GenerationParams,
               on_text: Callable[[str], None] | None = None) -> _Job:
        job = _Job(target, list(prompt_ids), params, on_text)
        with self._cv:
            if self._stopping:
                raise Overloaded("the server is shutting down")
            if len(self._jobs) >= self.max_queue:
                raise Overloaded(f"the server is busy ({self.max_queue} requests waiting); retry later")
            self._jobs.append(job)
            self._cv.notify()
        return job

    # -- worker side -----------------------------------------------------------------------

    def _next_batch(self) -> list[_Job] | None:
        with self._cv:
            while not self._jobs and not self._stopping:
                self._cv.wait()
            if self._stopping:
                return None
            first = self._jobs.popleft()
            batch, key = [first], first.batch_key()
            if key is not None:
                for job in list(self._jobs):
                    if len(batch) >= self.max_batch:
                        break
                    if job.batch_key() == key:
                        self._jobs.remove(job)
                        batch.append(job)
            return batch

    def _run(self) -> None:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)  # CPU: fewer threads than cores when others share them
        try:
            self._serve_jobs()
        finally:  # whatever still waits would otherwise wait forever
            with self._cv:
                left, self._jobs = list(self._jobs), deque()
            for job in left:
                if job.future.set_running_or_notify_cancel():
                    job.future.set_exception(Overloaded("the server is shutting down"))

    def _serve_jobs(self) -> None:
        while (batch := self._next_batch()) is not None:
            live = [j for j in batch if j.future.set_running_or_notify_cancel()]
            if not live:
                continue
            self.batch_sizes[len(live)] = self.batch_sizes.get(len(live), 0) + 1
            try:
                results = self._generate(live)
            except Exception as e:  # a failed batch fails its own requests, not the server
                for job in live:
                    job.future.set_exception(e)
                continue
            for job, result in zip(live, results):
                job.future.set_result(result)

    def _activate(self, target: Target):
        """The model to call, a context under which it computes with `target`'s weights, and
        the adapter's version."""
        if target.run is None:
            if self._peft is None:
                return self.base.model, nullcontext(), None
            return self._peft, self._peft.disable_adapter(), None
        adapter = self._load(target.run)
        self._peft.set_adapter(adapter.internal_name)
        return self._peft, nullcontext(), adapter.version

    def _load(self, run: ServedRun) -> _Adapter:
        stamp = _stamp(run.adapter_dir)
        cached = self._adapters.get(run.name)
        if cached is not None and cached.stamp == stamp:
            self._adapters.move_to_end(run.name)
            return cached
        self._counter += 1
        internal = f"adapter{self._counter}"
        try:
            if self._peft is None:
                from peft import PeftModel

                self._peft = PeftModel.from_pretrained(self.base.model, str(run.adapter_dir),
                                                       adapter_name=internal)
            else:
                self._peft.load_adapter(str(run.adapter_dir), adapter_name=internal)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise UnservableModel(f"model {run.name!r}: cannot load its adapter from "
                                  f"{run.adapter_dir} ({str(e).splitlines()[0] if str(e) else e!r})") from e
        self._peft.eval()
        if cached is not None:  # the weights changed on disk since they were loaded
            self._peft.delete_adapter(self._adapters.pop(run.name).internal_name)
        adapter = _Adapter(internal, adapter_version(run.adapter_dir), stamp)
        self._adapters[run.name] = adapter
        self._peft.set_adapter(internal)  # so deleting the previously active one moves nothing
        # Evict after loading, so the PEFT model never has zero adapters in between.
        while len(self._adapters) > self.max_adapters:
            _, oldest = self._adapters.popitem(last=False)
            self._peft.delete_adapter(oldest.internal_name)
        self._loaded_names = tuple(self._adapters)
        return adapter

    def _generate(self, jobs: list[_Job]) -> list[GenerationResult]:
        import torch

        params = jobs[0].params
        pad = self.tokenizer.pad_token_id
        width = max(len(j.prompt_ids) for j in jobs)
        # Left padding, so every row's next token comes right after its own prompt. (B, T)
        ids = torch.full((len(jobs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for row, job in enumerate(jobs):
            ids[row, width - len(job.prompt_ids):] = torch.tensor(job.prompt_ids)
            mask[row, width - len(job.prompt_ids):] = 1
        kwargs = dict(max_new_tokens=max(j.params.max_tokens for j in jobs), pad_token_id=pad,
                      eos_token_id=sorted(self._eos))
        if params.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=None)
            if params.seed is not None:
                torch.manual_seed(params.seed)  # only this thread samples, so the stream is the request's
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        decoder = None
        if jobs[0].on_text is not None:
            job = jobs[0]
            decoder = StreamDecoder(self.tokenizer, params.stop)

            def on_ids(new_ids: list[int]) -> None:
                piece = decoder.feed([t for t in new_ids if t not in self._eos])
                if piece:
                    job.on_text(piece)

            kwargs["streamer"] = TokenStreamer(on_ids)
            kwargs["stopping_criteria"] = [StopWhenCancelled(job.cancelled)]
        model, context, version = self._activate(jobs[0].target)
        with context, torch.inference_mode():
            out = model.generate(input_ids=ids.to(self.base.device),
                                 attention_mask=mask.to(self.base.device), **kwargs)
        if decoder is not None:
            tail = decoder.flush()
            if tail:
                jobs[0].on_text(tail)
        return [self._result(job, out[row, width:].tolist(), version) for row, job in enumerate(jobs)]

    def _result(self, job: _Job, new_ids: list[int], version: str | None) -> GenerationResult:
        new_ids = new_ids[:job.params.max_tokens]
        ended = next((i for i, t in enumerate(new_ids) if t in self._eos), None)
        if ended is not None:
            new_ids = new_ids[:ended + 1]
        text, hit_stop = finish_text(self.tokenizer.decode(new_ids, skip_special_tokens=True),
                                     job.params.stop)
        reason = "stop" if ended is not None or hit_stop else "length"
        return GenerationResult(text, len(job.prompt_ids), len(new_ids), reason, version)
