"""Generation for many models over one base (held as `holders.ModelHolder` says), one worker.

Why one worker: a PEFT model has one active adapter at a time, held in module state. Only the
worker thread ever touches the models, and it activates the weights of each forward pass right
before running it, so no request can run under another request's adapter. Requests wait in a
bounded queue. Requests share a forward pass when they ask for the same target, or, once the
PeftModel exists, for any LoRA/rsLoRA adapters and the base together (their matrices stacked,
`lora_rows.StackedLoraRows`; at most --max-adapters distinct adapters in a batch, so all of them
stay loaded while it runs). DoRA runs batch per adapter (PEFT cannot mix them). Sampled requests, and runs
served through their method's own model (a wrapper of the base, or an own copy), generate one
request at a time through `generate`, as `affina generate` does.

Two ways to batch (`Engine(batching=...)`, `affina serve --batching`):
- continuous (default): greedy requests, streamed or not, decode in one running batch over one KV
  cache (`continuous.RunningBatch`). Between steps, finished, cancelled and expired rows leave
  (their futures resolve at once) and waiting requests join (prefilled together, then merged
  into the cache), up to --max-batch rows. Requests join in arrival order; once the oldest waiting
  request cannot join, none does, so the batch drains and that request runs next.
- static: the oldest request plus the waiting requests that can share its forward pass (greedy,
  same stop strings, not streamed; same-target requests first) are left-padded into one batch for
  `generate`, which runs until its last row is done; new requests wait for the next batch.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

from ..errors import AffinaError
from ..methods import Sharing
from ..models import LoadedModel
from .continuous import Row, RunningBatch, supports_continuous
from .decoding import RowStops, StreamDecoder, TokenStreamer, finish_text
from .holders import ModelHolder
from .store import ModelStore, ServedRun, StoreScan, UnservableModel

__all__ = ["GenerationParams", "GenerationResult", "Target", "Engine", "Overloaded", "BadPrompt", "BATCHING"]

BATCHING = ("continuous", "static")  # `affina serve --batching`; the first is the default


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
    min_tokens: int = 0  # no stop token before this many (vLLM's `min_tokens`); stop strings still stop

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (eos, a stop string, or a whole label) or "length"
    adapter_version: str | None = None  # sha256 prefix of the run's artifact; None for the base


@dataclass(frozen=True)
class Target:
    """What a `model` name resolved to: the base (run None) or one run."""

    name: str
    run: ServedRun | None = None

    @property
    def batchable(self) -> bool:
        """The base and shared adapters batch; a method's own model answers one prompt at a time."""
        return self.run is None or self.run.sharing is Sharing.PEFT_ADAPTER

    @property
    def answers_label(self) -> bool:
        return self.run is not None and self.run.method.task.output == "label"


@dataclass
class _Job:
    target: Target
    prompt_ids: list[int]
    params: GenerationParams
    on_text: Callable[[str], None] | None = None  # streaming: called with each new piece of text
    future: Future = field(default_factory=Future)
    cancelled: threading.Event = field(default_factory=threading.Event)  # set: the client is gone
    deadline: float | None = None  # time.monotonic() after which generation stops ("length")
    # Set for a target whose rows can run beside other adapters' rows in the PeftModel: what
    # those rows must also share (the token ids that end a row, the tokenizer that decodes it).
    mix: tuple | None = None
    mixable: bool = False  # its rows may run beside other adapters' rows in one forward pass

    def batch_key(self, peft_exists: bool = False):
        if self.on_text is not None or not self.params.greedy or not self.target.batchable:
            return None  # streamed or sampled requests run alone (their own RNG stream)
        if self.mix is not None and (self.target.run is not None or peft_exists):
            # Until an adapter made the PeftModel, the base batches alone, on the plain model.
            return ("peft-shared", self.params.stop, self.params.min_tokens, self.mix)
        return (self.target.name, self.params.stop, self.params.min_tokens)


class Engine:
    """The base model, the runs' models and the worker that generates for every request."""

    def __init__(self, base: LoadedModel, base_name: str, store: ModelStore | None, *,
                 base_aliases: tuple[str, ...] = (), max_adapters: int = 8, max_models: int = 2,
                 max_queue: int = 64, max_batch: int = 8, threads: int | None = None,
                 dtype: str | None = None, batching: str = "continuous"):
        if min(max_adapters, max_models, max_queue, max_batch) < 1:
            raise AffinaError("--max-adapters, --max-models, --max-queue and --max-batch must each "
                              "be at least 1")
        if batching not in BATCHING:
            raise AffinaError(f"--batching must be one of {', '.join(BATCHING)}, not {batching!r}")
        self.base, self.base_name, self.store = base, base_name, store
        self.base_aliases = {base_name, *base_aliases}
        self.tokenizer = base.tokenizer
        self.max_queue, self.max_batch = max_queue, max_batch
        self.threads = threads
        self.models = ModelHolder(base, max_adapters=max_adapters, max_models=max_models, dtype=dtype)
        # Why this base cannot decode continuously (then every batch is static), or None.
        self.continuous_unsupported = supports_continuous(base.model) if batching == "continuous" else None
        self.batching = "static" if self.continuous_unsupported else batching
        self._jobs: deque[_Job] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self.batch_sizes: dict[int, int] = {}  # batch size → how many batches had it
        self.batch_models: dict[int, int] = {}  # distinct targets in a batch → how many batches had it
        # Rows in one decoding step → how many steps had it (both modes; a static batch's rows
        # count until its longest row ends, a continuous batch's until each row leaves).
        self.step_rows: dict[int, int] = {}
        self.joined_running = 0  # requests that joined a batch already decoding (continuous)
        self.prefill_rows: dict[int, int] = {}  # requests prefilled together → how many times (continuous)
        self._worker = threading.Thread(target=self._run, name="affina-generate", daemon=True)

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
        return list(self.models.loaded_adapters)  # a snapshot the worker replaces whole

    def loaded_models(self) -> list[str]:
        """Runs held on their own copy of the base (at most --max-models)."""
        return list(self.models.loaded_models)

    def scan(self) -> StoreScan:
        """The store's runs this server serves, and the others with the reason why not."""
        scan = self.store.scan() if self.store else StoreScan()
        served = [r for r in scan.servable if self.base_matches(r)]
        other = [(r.name, f"trained on base {r.base_spec!r}, not {self.base.spec!r}")
                 for r in scan.servable if not self.base_matches(r)]
        return StoreScan(served, sorted(scan.unavailable + other))

    def served_runs(self) -> list[ServedRun]:
        return self.scan().servable

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

    def chat_prompt_ids(self, messages: list[dict], target: Target | None = None) -> list[int]:
        """The prompt rendered with the chat template of `target` (`ModelHolder.tokenizer`)."""
        from jinja2 import TemplateError

        tokenizer = self.models.tokenizer(target.run if target else None)
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except TemplateError as e:  # e.g. a template that insists on alternating roles
            raise BadPrompt(f"the model's chat template cannot render these messages: {e}") from None
        # The template already wrote any BOS; adding special tokens again would double it.
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def text_prompt_ids(self, prompt: str, target: Target | None = None) -> list[int]:
        return self.models.tokenizer(target.run if target else None)(prompt)["input_ids"]

    def submit(self, target: Target, prompt_ids: list[int], params: GenerationParams,
               on_text: Callable[[str], None] | None = None, deadline: float | None = None) -> _Job:
        """Queue one request. Setting `job.cancelled` stops its generation at the next token (or
        skips it while it waits); past `deadline` (time.monotonic) it stops with "length"."""
        job = _Job(target, list(prompt_ids), params, on_text, deadline=deadline)
        job.mixable = not target.answers_label and self.models.mixable(target.run)
        if on_text is None and params.greedy and job.mixable:
            run = target.run
            job.mix = (tuple(self.models.stops(run)), id(self.models.tokenizer(run)))
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
            if self._joins(first):
                return [first]  # the running batch takes the rest between its steps
            peft = self.models.has_peft
            batch, key = [first], first.batch_key(peft)
            adapters = {first.target.name} if first.target.run is not None else set()
            if key is not None:
                # Same-target rows first, then other adapters': mixing fills the batches that
                # would otherwise run short, and adapters PEFT mixes itself (not stacked) cost
                # some work per distinct adapter in every LoRA layer.
                waiting = sorted(self._jobs, key=lambda j: j.target.name != first.target.name)
                for job in waiting:
                    if len(batch) >= self.max_batch:
                        break
                    if job.batch_key(peft) != key:
                        continue
                    name = job.target.name if job.target.run is not None else None
                    if name is not None and name not in adapters:
                        if len(adapters) >= self.models.max_adapters:
                            continue  # it would evict an adapter of this batch: the next batch
                        adapters.add(name)
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
            if self._joins(batch[0]):
                self._decode_continuously(batch[0])
                continue
            live = [j for j in batch if j.future.set_running_or_notify_cancel()]
            for job in [j for j in live if self._expired(j)]:
                live.remove(job)  # nobody waits for it, or its time ran out in the queue
                job.future.set_result(GenerationResult("", len(job.prompt_ids), 0, "length"))
            live = self._load_each(live)
            if not live:
                continue
            self._count(len(live), len({j.target.name for j in live}))
            try:
                results = self._generate(live)
            except Exception as e:  # a failed batch fails its own requests, not the server
                for job in live:
                    job.future.set_exception(e)
                continue
            for job, result in zip(live, results):
                job.future.set_result(result)

    def _count(self, rows: int, targets: int) -> None:
        self.batch_sizes[rows] = self.batch_sizes.get(rows, 0) + 1
        self.batch_models[targets] = self.batch_models.get(targets, 0) + 1

    # -- continuous batching ---------------------------------------------------------------

    def _joins(self, job: _Job) -> bool:
        """Whether `job` decodes in the running batch: greedy (streamed or not) requests for the
        base or a shared adapter. Sampled requests keep `generate` alone, so a seeded request
        draws exactly the stream `affina generate --seed` draws."""
        return (self.batching == "continuous" and job.params.greedy and job.target.batchable
                and not job.target.answers_label)

    def _row_key(self, job: _Job):
        """Requests with equal keys decode together: every mixable target once the PeftModel
        exists (until then the base runs on the plain model), otherwise one target."""
        if job.mixable and (job.target.run is not None or self.models.has_peft):
            return "peft-shared"
        return ("one", job.target.name)

    def _fits(self, job: _Job, key) -> bool:
        return self._joins(job) and (key is None or self._row_key(job) == key)

    def _take_joiners(self, key, rows: list[Row], taken: list[_Job]) -> list[_Job]:
        """Waiting requests that join the running batch now, oldest first, while there is room
        (--max-batch rows, --max-adapters distinct adapters), passing over those that cannot
        join. While the oldest waiting request cannot join (another kind of request, or one more
        adapter than the batch may hold), none joins: the batch drains and that request is served
        next, so a steady stream of joiners never starves it."""
        adapters = {j.target.name for j in [r.job for r in rows] + taken if j.target.run is not None}
        taken = list(taken)  # already taken from the queue (the request that starts the batch)

        def new_adapter(job: _Job) -> bool:
            return job.target.run is not None and job.target.name not in adapters

        with self._cv:
            oldest = self._jobs[0] if self._jobs else None
            if rows and oldest is not None and (not self._fits(oldest, key) or (
                    new_adapter(oldest) and len(adapters) >= self.models.max_adapters)):
                return taken
            for job in list(self._jobs):
                if self._stopping or len(rows) + len(taken) >= self.max_batch:
                    break
                if not self._fits(job, key):
                    continue
                key = self._row_key(job)
                if new_adapter(job):
                    if len(adapters) >= self.models.max_adapters:
                        continue  # it would evict an adapter a row decodes with: a later batch
                    adapters.add(job.target.name)
                self._jobs.remove(job)
                taken.append(job)
        return taken

    def _join(self, jobs: list[_Job], batch: RunningBatch, rows: list[Row]) -> list[Row]:
        """Prefills `jobs` (requests with one row key) together and merges them into `batch`;
        returns the rows that joined. A request that ends before decoding is resolved here:
        skipped, expired, its adapter failed to load (its own request fails, not the others), or
        done in one token."""
        import torch

        ready = []
        for job in jobs:
            if not job.future.set_running_or_notify_cancel():
                continue
            if self._expired(job):
                job.future.set_result(GenerationResult("", len(job.prompt_ids), 0, "length"))
                continue
            ready.append(job)
        if not ready:
            return []
        joining: list[tuple[_Job, str | None, str | None]] = []  # (job, PEFT name, version)
        if self._row_key(ready[0]) == "peft-shared":
            for job in ready:
                try:
                    # Loads the row's adapter after touching the running and joining rows' ones,
                    # so none of theirs is evicted; a reloaded adapter may have a new name, so
                    # all are renamed.
                    names, versions = self.models.load_rows([r.job.target.run for r in rows]
                                                            + [j.target.run for j, _, _ in joining]
                                                            + [job.target.run])
                except Exception as e:  # its adapter cannot load: its own request fails
                    job.future.set_exception(e)
                    continue
                for row, name in zip(rows, names):
                    row.adapter = name
                joining = [(j, name, version) for (j, _, version), name in zip(joining, names[len(rows):])]
                joining.append((job, names[-1], versions[-1]))
            if not joining:
                return []
            joining_names = [name for _, name, _ in joining]
        else:  # one target for all of them: a DoRA run, or the base before any adapter
            joining, joining_names = [(job, None, None) for job in ready], None
        self.prefill_rows[len(joining)] = self.prefill_rows.get(len(joining), 0) + 1
        try:
            active = (self.models.activate_rows(joining_names) if joining_names is not None
                      else self.models.activate(ready[0].target.run))
            suppress = [self.models.stops(j.target.run) if j.params.min_tokens else None for j, _, _ in joining]
            with active.context, torch.inference_mode():
                prefilled = batch.prefill(active.model, [j.prompt_ids for j, _, _ in joining],
                                          self.base.device, suppress, **active.kwargs)
        except Exception as e:  # e.g. the one target cannot load: those requests fail, not the batch
            for job, _, _ in joining:
                job.future.set_exception(e)
            return []
        joined, keep = [], []
        for i, ((job, name, version), token) in enumerate(zip(joining, prefilled.tokens)):
            run = job.target.run
            row = Row(job, self.models.tokenizer(run), self.models.stops(run),
                      version if name is not None else active.version)
            row.adapter, row.active = name, active
            if row.feed(token):
                self._finish(row)
            else:
                joined.append(row)
                keep.append(i)
        if keep:
            batch.join(prefilled, keep)
        return joined

    def _finish(self, row: Row) -> None:
        row.close_stream()
        row.job.future.set_result(self._result(row.job, row.ids, row.version, row.tokenizer,
                                               list(row.stops)))

    def _decode_continuously(self, first: _Job) -> None:
        """Decodes greedy rows over one KV cache until none is left, letting waiting requests
        join between steps and finished ones leave (their answers go out at once)."""
        import torch

        batch, rows, pending, key = RunningBatch(self.base.model), [], [first], self._row_key(first)
        while True:
            joiners = self._take_joiners(key, rows, pending)
            pending = []
            joined = self._join(joiners, batch, rows)
            if rows:
                self.joined_running += len(joined)
            rows += joined
            if not rows:
                return
            key = self._row_key(rows[0].job)
            if joined:
                self._count(len(rows), len({r.job.target.name for r in rows}))
            try:
                if key == "peft-shared":  # which weights each row decodes with, by PEFT name
                    active = self.models.activate_rows([r.adapter for r in rows])
                else:  # one target (a DoRA run, or the base before any adapter): as it joined
                    active = rows[-1].active
                suppress = [r.suppressed() for r in rows]
                with active.context, torch.inference_mode():
                    tokens = batch.step(active.model, suppress, **active.kwargs)
            except Exception as e:  # a failed step fails the rows decoding, not the server
                for row in rows:
                    row.job.future.set_exception(e)
                return
            self.step_rows[len(rows)] = self.step_rows.get(len(rows), 0) + 1
            keep = []
            for index, (row, token) in enumerate(zip(rows, tokens)):
                if row.feed(token):
                    self._finish(row)
                else:
                    keep.append(index)
            if len(keep) < len(rows):
                batch.leave(keep)
                rows = [rows[i] for i in keep]
            if not rows:  # drained: the oldest waiting request starts the next batch, whatever it is
                return

    def _load_each(self, jobs: list[_Job]) -> list[_Job]:
        """The jobs of a mixed batch whose adapters load; a run whose adapter cannot load fails
        its own requests, not the other rows it was batched with."""
        runs = {j.target.name: j.target.run for j in jobs if j.target.run is not None}
        if len({j.target.name for j in jobs}) < 2 or not runs:
            return jobs  # one target: `_generate` loads it and fails the batch, which is all its own
        failed = {}
        for name, run in runs.items():
            try:
                self.models.activate(run)
            except Exception as e:
                failed[name] = e
        for job in [j for j in jobs if j.target.name in failed]:
            job.future.set_exception(failed[job.target.name])
        return [j for j in jobs if j.target.name not in failed]

    @staticmethod
    def _expired(job: _Job) -> bool:
        return job.cancelled.is_set() or (job.deadline is not None and time.monotonic() >= job.deadline)

    def _generate(self, jobs: list[_Job]) -> list[GenerationResult]:
        import torch

        params, target = jobs[0].params, jobs[0].target
        tokenizer = self.models.tokenizer(target.run)  # one for all rows: part of the batch key
        stops = self.models.stops(target.run)
        # First: loading may fail this batch alone.
        if len({j.target.name for j in jobs}) > 1:  # rows of several adapters and/or the base
            active, _, versions = self.models.activate_mixed([j.target.run for j in jobs])
        else:
            active = self.models.activate(target.run)
            versions = [active.version] * len(jobs)
        pad = tokenizer.pad_token_id
        width = max(len(j.prompt_ids) for j in jobs)
        # Left padding, so every row's next token comes right after its own prompt. (B, T)
        ids = torch.full((len(jobs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for row, job in enumerate(jobs):
            ids[row, width - len(job.prompt_ids):] = torch.tensor(job.prompt_ids)
            mask[row, width - len(job.prompt_ids):] = 1
        kwargs = dict(max_new_tokens=max(j.params.max_tokens for j in jobs), pad_token_id=pad,
                      eos_token_id=list(stops))
        if params.min_tokens and not target.answers_label:  # one value per batch: in the batch key
            kwargs["min_new_tokens"] = params.min_tokens
        kwargs.update(active.kwargs)  # PEFT's `adapter_names`, where a mixed batch needs them
        if params.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=None)
            if params.seed is not None:
                torch.manual_seed(params.seed)  # only this thread samples, so the stream is the request's
        # Every row stops on its own when its client leaves, its time is up or a stop string shows
        # (a batch shares its stop strings: they are part of the batch key).
        kwargs["stopping_criteria"] = [RowStops(width, [j.cancelled for j in jobs],
                                                [j.deadline for j in jobs], params.stop, tokenizer)]
        decoder = streamer = None
        if jobs[0].on_text is not None:
            job = jobs[0]
            decoder = StreamDecoder(tokenizer, params.stop)

            def on_ids(new_ids: list[int]) -> None:
                piece = decoder.feed([t for t in new_ids if t not in stops])
                if piece:
                    job.on_text(piece)

            streamer = kwargs["streamer"] = TokenStreamer(on_ids)
        device = next(active.model.parameters()).device
        with active.context, torch.inference_mode():
            out = active.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
        steps = max(out.shape[1] - width - 1, 0)  # forward passes after the prefill
        self.step_rows[len(jobs)] = self.step_rows.get(len(jobs), 0) + steps
        results = [self._result(job, out[row, width:].tolist(), versions[row], tokenizer, stops)
                   for row, job in enumerate(jobs)]
        if decoder is not None:
            tail = ""
            if not streamer.prompt_seen:  # a model that answers at once (a classifier) streams nothing
                tail = decoder.feed([t for t in out[0, width:].tolist() if t not in stops])
            tail += decoder.flush()
            if tail:
                jobs[0].on_text(tail)
        return results

    def _result(self, job: _Job, new_ids: list[int], version: str | None, tokenizer,
                stops: list[int]) -> GenerationResult:
        label = job.target.answers_label
        if not label:  # a label is answered whole, as `affina generate` prints it
            new_ids = new_ids[:job.params.max_tokens]
        ended = next((i for i, t in enumerate(new_ids) if t in stops), None)
        if ended is not None:
            new_ids = new_ids[:ended + 1]
        text, hit_stop = finish_text(tokenizer.decode(new_ids, skip_special_tokens=True),
                                     job.params.stop)
        reason = "stop" if label or ended is not None or hit_stop else "length"
        return GenerationResult(text, len(job.prompt_ids), len(new_ids), reason, version)
