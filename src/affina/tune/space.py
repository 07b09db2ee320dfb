"""The search space file: which RunConfig keys to search, over what ranges, toward what.

```yaml
objective: validation_loss        # or eval.<metric>, e.g. eval.json_fields (maximised)
pruner: {name: median, startup_trials: 2, warmup_steps: 0}   # or {name: none}
seed: 0                           # sampler seed (default: the run config's train.seed)
params:
  train.lr: {low: 1.0e-4, high: 3.0e-3, log: true}   # float range
  method.r: {choices: [4, 8, 16]}                     # categorical
  train.epochs: {low: 1, high: 3}                     # int range (both bounds integers)
  method.name: {choices: [lora]}                      # the method itself
```

`method.*` keys other than `method.name` are searched only when the trial's method has that
field, so one space can cover methods with different settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import RunConfig, config_from_dict, read_yaml_mapping
from ..errors import ConfigError

__all__ = ["ParamSpec", "SearchSpace", "load_space", "suggest_params", "apply_params"]

_PRUNERS = ("median", "percentile", "hyperband", "none")


@dataclass
class ParamSpec:
    key: str
    kind: str  # float | int | categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: list = field(default_factory=list)

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, self.choices)
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1),
                                     log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), step=self.step, log=self.log)


@dataclass
class SearchSpace:
    path: Path
    params: list[ParamSpec]
    objective: str = "validation_loss"
    pruner: dict = field(default_factory=lambda: {"name": "median"})
    seed: int | None = None

    @property
    def direction(self) -> str:
        return "minimize" if self.objective == "validation_loss" else "maximize"

    def make_pruner(self):
        import optuna

        p = dict(self.pruner)
        name = p.pop("name", "median")
        if name == "none":
            return optuna.pruners.NopPruner()
        if name == "hyperband":
            return optuna.pruners.HyperbandPruner(**p)
        startup, warmup = p.pop("startup_trials", 1), p.pop("warmup_steps", 0)
        if name == "percentile":
            return optuna.pruners.PercentilePruner(p.pop("percentile", 25.0), n_startup_trials=startup,
                                                   n_warmup_steps=warmup)
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)


def load_space(path: str | Path) -> SearchSpace:
    path = Path(path)
    raw = read_yaml_mapping(path, "search space file",
                            "a search space must be a mapping with objective, pruner, seed, params")
    unknown = set(raw) - {"objective", "pruner", "seed", "params"}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; "
                          "expected objective, pruner, seed, params")
    if not isinstance(raw.get("params"), dict) or not raw["params"]:
        raise ConfigError(f"{path}: 'params' must map config keys (e.g. train.lr) to ranges or choices")
    params = [_param(path, str(k), v) for k, v in raw["params"].items()]
    objective = str(raw.get("objective", "validation_loss"))
    if objective != "validation_loss" and not objective.startswith("eval."):
        raise ConfigError(f"{path}: objective must be validation_loss or eval.<metric>, got {objective!r}")
    pruner = raw.get("pruner", {"name": "median"})
    if not isinstance(pruner, dict) or pruner.get("name", "median") not in _PRUNERS:
        raise ConfigError(f"{path}: pruner.name must be one of {', '.join(_PRUNERS)}")
    return SearchSpace(path, params, objective, pruner, raw.get("seed"))


def _param(path: Path, key: str, body) -> ParamSpec:
    where = f"{path}: params.{key}"
    if "." not in key:
        raise ConfigError(f"{where}: use a dotted config key such as train.lr or method.r")
    if isinstance(body, list):
        body = {"choices": body}
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: give {{low, high}} or {{choices: [...]}}")
    if not key.startswith("method."):
        # Check the key and a sample value against the RunConfig schema now, not in trial 5.
        section, name = key.split(".", 1)
        sample = body["choices"][0] if body.get("choices") else body.get("low")
        try:
            config_from_dict({section: {name: sample}})
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    if "choices" in body:
        if not isinstance(body["choices"], list) or not body["choices"]:
            raise ConfigError(f"{where}: choices must be a non-empty list")
        return ParamSpec(key, "categorical", choices=body["choices"])
    try:
        low, high = _number(body["low"]), _number(body["high"])
    except (KeyError, ValueError):
        raise ConfigError(f"{where}: a range needs numeric low and high") from None
    if low >= high:
        raise ConfigError(f"{where}: low must be below high")
    kind = body.get("type") or ("int" if isinstance(low, int) and isinstance(high, int) else "float")
    if kind not in ("int", "float"):
        raise ConfigError(f"{where}: type must be int or float")
    return ParamSpec(key, kind, low, high, bool(body.get("log", False)), body.get("step"))


def _number(value):
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, (int, float)):
        return value
    return float(value)  # PyYAML reads 1e-4 (no dot) as a string


def suggest_params(trial, space: SearchSpace, base_method: str) -> dict[str, Any]:
    """The trial's values; `method.name` first, so the other method.* keys can depend on it."""
    from ..methods import get_method
    from dataclasses import fields

    values: dict[str, Any] = {}
    by_key = {p.key: p for p in space.params}
    if "method.name" in by_key:
        values["method.name"] = by_key["method.name"].suggest(trial)
    method = get_method(values.get("method.name", base_method))
    method_fields = {f.name for f in fields(method.config_class)}
    for p in space.params:
        if p.key == "method.name":
            continue
        if p.key.startswith("method.") and p.key.split(".", 1)[1] not in method_fields:
            continue
        values[p.key] = p.suggest(trial)
    return values


def apply_params(cfg: RunConfig, values: dict[str, Any]) -> RunConfig:
    """A new RunConfig with the trial's values. When the trial switches method, the base
    config's method fields the new method does not have are dropped (as for a command-line
    `method.name=`; see `config.apply_values`); the sampled method keys are its own."""
    from ..config import apply_values, config_to_dict
    from ..methods import method_field_names

    copy = config_from_dict(config_to_dict(cfg))
    ordered = dict(sorted(values.items(), key=lambda kv: kv[0] != "method.name"))
    return apply_values(copy, ordered, method_field_names).validate()
