"""A fine-tuning job request (POST /v1/fine_tuning/jobs, `affina jobs submit`) field by field:
each parsed and checked on its own, refused with a `JobRequestError` that names the field
(`param`) and what it takes, as OpenAI's error object does. `JobsService.create_job` calls them
and checks what needs the server (files, the model, the method against the base).

- `parse_method`: `method` ({"type": "supervised"|"dpo", ...}) with affina's extension
  `method.affina` (`method`, `options`, `train`): the affina method and its options.
- `parse_hyperparameters`: n_epochs, batch_size, learning_rate_multiplier, each "auto" or a number.
- `eval_settings`, `replay_fraction`, `distributed_options`: `method.affina.eval`,
  `.replay_fraction` and `.distributed`; `continued_method`: a continued job's method.
- `parse_metadata`: OpenAI's limits (16 string pairs, keys up to 64 and values up to 512 characters).
"""

from __future__ import annotations

from ..errors import AffinaError

__all__ = ["HYPERPARAMETERS", "JobRequestError", "NotFound", "continued_method", "distributed_options",
           "eval_settings", "parse_hyperparameters", "parse_metadata", "parse_method", "replay_fraction"]

HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")
_METADATA_LIMITS = (16, 64, 512)  # pairs, key length, value length (OpenAI's)


class JobRequestError(AffinaError):
    """A request the service refuses; the API answers `status` with OpenAI's error object."""

    def __init__(self, message: str, *, status: int = 400, code: str = "invalid_request",
                 param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.param = status, code, param


class NotFound(JobRequestError):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message, status=404, code="not_found", param=param)


def parse_hyperparameters(value, param: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise JobRequestError(f"{param} must be an object", param=param)
    out = {}
    for key, v in value.items():
        if key == "beta":
            continue  # DPO's own, read with the method
        if key not in HYPERPARAMETERS:
            raise JobRequestError(f"{param}.{key} is not supported; use {', '.join(HYPERPARAMETERS)}",
                                  param=f"{param}.{key}")
        if v == "auto" or v is None:
            out[key] = "auto"
            continue
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        if key == "learning_rate_multiplier":
            ok = number and 0 < v <= 10
        else:
            ok = number and float(v).is_integer() and 1 <= v <= (50 if key == "n_epochs" else 256)
            v = int(v) if ok else v
        if not ok:
            limits = {"n_epochs": "an integer 1..50", "batch_size": "an integer 1..256",
                      "learning_rate_multiplier": "a number in (0, 10]"}[key]
            raise JobRequestError(f"{param}.{key} must be \"auto\" or {limits}, got {v!r}",
                                  param=f"{param}.{key}")
        out[key] = v
    return out


def parse_method(method) -> tuple[dict, str, dict, dict, dict]:
    """(the method object as stored, affina method name, its options, the section's
    hyperparameters, extra train keys). `{"type": "supervised"}` trains LoRA unless the affina
    extension names another method; `{"type": "dpo"}` trains the `dpo` method."""
    if method is None:
        method = {"type": "supervised"}
    if not isinstance(method, dict):
        raise JobRequestError("method must be an object like {\"type\": \"supervised\"}", param="method")
    kind = method.get("type", "supervised")
    if kind not in ("supervised", "dpo"):
        raise JobRequestError(f"method.type {kind!r} is not supported; use supervised or dpo",
                              param="method.type")
    section = method.get(kind) or {}
    if not isinstance(section, dict):
        raise JobRequestError(f"method.{kind} must be an object", param=f"method.{kind}")
    extension = method.get("affina") or section.get("affina") or {}
    if not isinstance(extension, dict):
        raise JobRequestError("method.affina must be an object like {\"method\": \"dora\", "
                              "\"options\": {...}}", param="method.affina")
    section_hp = section.get("hyperparameters") or {}
    hp = parse_hyperparameters(section_hp, f"method.{kind}.hyperparameters")
    name = extension.get("method") or ("dpo" if kind == "dpo" else "lora")
    options = extension.get("options") or {}
    train_extra = extension.get("train") or {}
    if not isinstance(name, str) or not isinstance(options, dict) or not isinstance(train_extra, dict):
        raise JobRequestError("method.affina: method is a name, options and train are objects",
                              param="method.affina")
    if kind == "dpo":
        beta = section_hp.get("beta", "auto") if isinstance(section_hp, dict) else "auto"
        if beta != "auto":
            if not isinstance(beta, (int, float)) or isinstance(beta, bool) or beta <= 0:
                raise JobRequestError("method.dpo.hyperparameters.beta must be \"auto\" or a number > 0",
                                      param="method.dpo.hyperparameters.beta")
            options = {**options, "beta": float(beta)}
    stored = {"type": kind, kind: {k: v for k, v in section.items() if k != "affina"}}
    return stored, name, options, hp, train_extra


def _extension(method) -> dict:
    """`method.affina` (or `method.<type>.affina`) as given, {} when absent."""
    if not isinstance(method, dict):
        return {}
    section = method.get(method.get("type", "supervised"))
    extension = method.get("affina") or (section.get("affina") if isinstance(section, dict) else None)
    return extension if isinstance(extension, dict) else {}


_EVAL_KEYS = ("max_new_tokens", "batch_size", "metrics")


def eval_settings(method) -> dict:
    """`method.affina.eval`: settings of the evaluation a job's run makes (and that promotion
    reuses), among max_new_tokens, batch_size and metrics; {} when absent."""
    from ..config import EvalConfig

    value = _extension(method).get("eval")
    if value is None:
        return {}
    if not isinstance(value, dict) or set(value) - set(_EVAL_KEYS):
        raise JobRequestError(f"method.affina.eval: an object with keys among {', '.join(_EVAL_KEYS)}",
                              param="method.affina.eval")
    try:
        EvalConfig(**value).validate()
    except (AffinaError, TypeError) as e:
        raise JobRequestError(f"method.affina.eval: {e}", param="method.affina.eval") from None
    return dict(value)


def replay_fraction(method) -> float | None:
    """`method.affina.replay_fraction`: the share of a continued job's examples drawn from the
    earlier model's training data (as `replay.fraction`); None when not given."""
    value = _extension(method).get("replay_fraction")
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
        raise JobRequestError(f"method.affina.replay_fraction must be a number in [0, 1), got {value!r}",
                              param="method.affina.replay_fraction")
    return float(value)


def continued_method(continued: dict, method, name: str, options: dict) -> tuple[str, dict]:
    """A continued job trains with the method and options of the model it continues; naming
    another method, or options, is refused (a `type: dpo` job continues only a preference run)."""
    given = _extension(method).get("method")
    kind = method.get("type", "supervised") if isinstance(method, dict) else "supervised"
    earlier = continued["method"]
    if (given and given != earlier) or (kind == "dpo" and earlier not in ("dpo", "orpo", "kto")):
        raise JobRequestError(f"model {continued['from']!r} was trained with method {earlier}; a job that "
                              f"continues it trains with {earlier} too (drop method.affina.method, or "
                              "fine-tune the base with another method)", code="model_not_supported",
                              param="method")
    if options and {k: v for k, v in options.items() if k != "beta"}:
        raise JobRequestError(f"method.affina.options: a job that continues {continued['from']!r} keeps "
                              f"its method options ({earlier}); drop them", param="method.affina.options")
    return earlier, dict(continued["options"])


def distributed_options(method, method_name: str) -> dict:
    """`method.affina.distributed`: the job trains on several processes (the worker's `affina
    train` launches them), e.g. {"strategy": "ddp", "nproc_per_node": 4}; {} when absent."""
    from dataclasses import fields

    from ..config import DistributedConfig
    from ..methods import get_method

    spread = _extension(method).get("distributed")
    if not spread:
        return {}
    allowed = {f.name for f in fields(DistributedConfig)}
    if not isinstance(spread, dict) or set(spread) - allowed:
        raise JobRequestError("method.affina.distributed: an object with keys among "
                              f"{', '.join(sorted(allowed))}", param="method.affina.distributed")
    try:
        DistributedConfig(**spread).validate()
    except (AffinaError, TypeError) as e:
        raise JobRequestError(f"method.affina.distributed: {e}", param="method.affina.distributed") from None
    if spread.get("strategy") == "fsdp" and not get_method(method_name).shards_with_fsdp:
        raise JobRequestError(f"method.affina.distributed: method {method_name} does not train sharded "
                              "(lora, dora, rslora, qlora and full do); use strategy ddp",
                              param="method.affina.distributed")
    return dict(spread)


def parse_metadata(value) -> dict | None:
    if value is None:
        return None
    pairs, key_len, value_len = _METADATA_LIMITS
    ok = (isinstance(value, dict) and len(value) <= pairs
          and all(isinstance(k, str) and isinstance(v, str) and len(k) <= key_len and len(v) <= value_len
                  for k, v in value.items()))
    if not ok:
        raise JobRequestError(f"metadata: at most {pairs} string pairs, keys up to {key_len} and values "
                              f"up to {value_len} characters", param="metadata")
    return dict(value)
