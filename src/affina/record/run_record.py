"""`affina.json`: the run record, the one file affina adds beside a standard artifact.

It is the contract between the layers: the training recipe writes it, and evaluation, the
registry, lineage, export and the server read it, always through `RunRecord` (never by indexing
raw JSON). It records what produced the artifact: base model spec and fingerprint, data files
(with their sha256 and a path relative to the run directory), method and parameter counts, seed,
library versions, git commit, the chat template and stop tokens used, and final metrics.

Schema history: 1 — the first layout (method options flattened beside the method name);
2 — typed sections, method options nested, data paths relative to the run, template record.
`read_record` loads both.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from ..errors import AffinaError

__all__ = ["MANIFEST_NAME", "SCHEMA_VERSION", "RunRecord", "BaseModelInfo", "DataFile",
           "SplitInfo", "DataInfo", "MethodInfo", "TrainInfo", "MetricsInfo", "TemplateInfo",
           "RUN_CONFIG_NAME", "write_record", "read_record", "read_run_config", "is_run_dir",
           "library_versions", "git_commit"]

MANIFEST_NAME = "affina.json"
RUN_CONFIG_NAME = "config.yaml"  # the resolved config, saved when the run directory is created
SCHEMA_VERSION = 2


@dataclass
class BaseModelInfo:
    spec: str
    path: str = ""
    fingerprint: str | None = None
    model_class: str = ""


@dataclass
class DataFile:
    """One data file a run read. `path` is absolute where the run was made; `relative` is the
    same file seen from the run directory, so a run copied together with its data still finds
    it; `sha256` is checked whenever the file is used again."""

    path: str
    role: str = "train"  # train | validation | eval
    format: str = ""
    rows: int = 0
    sha256: str = ""
    relative: str | None = None


@dataclass
class SplitInfo:
    rows: int = 0
    fingerprint: str | None = None
    stats: dict = field(default_factory=dict)  # token counts, percentiles, truncation


@dataclass
class DataInfo:
    files: list[DataFile] = field(default_factory=list)
    train: SplitInfo = field(default_factory=SplitInfo)
    validation: SplitInfo = field(default_factory=SplitInfo)
    packing: dict | None = None
    chat_template: str = "tokenizer"  # how the template was chosen, e.g. "tokenizer", "builtin chatml"
    warnings: list[str] = field(default_factory=list)
    # The fingerprint of every training-file record before the split, as `affina data inspect`
    # prints it; None in records written before it was kept.
    source_fingerprint: str | None = None
    mix: list[dict] | None = None  # data.mix: per file path, weight, rows and examples drawn


@dataclass
class MethodInfo:
    name: str
    options: dict = field(default_factory=dict)  # every field of the method's config class
    trainable_params: int = 0
    total_params: int = 0
    trainable_percent: float = 0.0
    trainable_bytes: int = 0
    report: dict = field(default_factory=dict)  # method-specific facts (Method.report)


@dataclass
class TrainInfo:
    global_step: int = 0
    epochs: float = 0.0
    train_loss: float | None = None
    seconds: float = 0.0
    best_checkpoint: str | None = None
    best_metric: float | None = None
    best_step: int | None = None
    stopped_early: bool = False
    stop_step: int = 0
    world_size: int = 1  # processes that trained it (distributed.strategy ddp/fsdp: more than 1)
    profile: str = "default"  # train.profile
    chunked_loss: bool = False  # train.chunked_loss, resolved for the device
    mixed_precision: str = "none"  # train.mixed_precision, resolved: fp8 (bf16 autocast + fp8 base), bf16 (autocast) or none
    fused_projections: bool = False  # train.fuse_projections, resolved: sibling projections were fused


@dataclass
class MetricsInfo:
    validation_loss: float | None = None
    eval_before: dict | None = None
    eval_after: dict | None = None


@dataclass
class TemplateInfo:
    """The chat template and the stop tokens the run was trained with: what serving, export and
    generation must use for the model to answer as it learned to."""

    sha256: str | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    stop_tokens: list[str] = field(default_factory=list)


@dataclass
class RunRecord:
    kind: str  # "adapter" (loads onto a base) or "model" (a whole HF model)
    artifact: str
    base_model: BaseModelInfo
    method: MethodInfo
    created: str = ""
    data: DataInfo = field(default_factory=DataInfo)
    seed: int = 0
    device: str = ""
    versions: dict = field(default_factory=dict)
    git_commit: str | None = None
    mlflow_run_id: str | None = None
    train: TrainInfo = field(default_factory=TrainInfo)
    metrics: MetricsInfo = field(default_factory=MetricsInfo)
    template: TemplateInfo | None = None
    sweep: dict | None = None
    # Continued training: the earlier model, the replay draw, the earlier evaluation sets and
    # the forgetting table (train/continual.py); None for a run trained from its base.
    continual: dict | None = None
    schema_version: int = SCHEMA_VERSION

    def artifact_dir(self, run_dir: Path) -> Path:
        return Path(run_dir) / self.artifact

    def data_files(self, role: str | None = None) -> list[DataFile]:
        return [f for f in self.data.files if role is None or f.role == role]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(tp: Any, value: Any, where: str) -> Any:
    """A dataclass (or list/optional of one) from plain JSON data; unknown keys are ignored so a
    newer writer's additions do not break an older reader."""
    origin, args = get_origin(tp), get_args(tp)
    if value is None:
        return None
    if args and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return _build(inner[0], value, where)
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        return [_build(args[0], v, where) for v in value]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise AffinaError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        hints = get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        kwargs = {k: _build(hints[k], v, f"{where}.{k}") for k, v in value.items() if k in names}
        try:
            return tp(**kwargs)
        except TypeError as e:
            raise AffinaError(f"{where}: {e}") from None
    return value


def _upgrade_v1(body: dict) -> dict:
    """Schema 1 → 2: method options were flattened beside the counts; the base model's class
    was `class`; data file entries carried no relative path."""
    from ..methods import get_method

    body = dict(body)
    method = dict(body.get("method") or {})
    counts = {k: method.pop(k) for k in ("trainable_params", "total_params", "trainable_percent",
                                         "trainable_bytes") if k in method}
    name = method.pop("name", "")
    try:
        fields = {f.name for f in dataclasses.fields(get_method(name).config_class)}
    except AffinaError:
        fields = set(method)
    options = {k: v for k, v in method.items() if k in fields}
    report = {k: v for k, v in method.items() if k not in fields}
    body["method"] = {"name": name, "options": options, "report": report, **counts}
    base = dict(body.get("base_model") or {})
    if "class" in base:
        base["model_class"] = base.pop("class")
    body["base_model"] = base
    data = dict(body.get("data") or {})
    for split in ("train", "validation"):
        s = dict(data.get(split) or {})
        data[split] = {"rows": s.pop("rows", 0), "fingerprint": s.pop("fingerprint", None), "stats": s}
    body["data"] = data
    body["schema_version"] = SCHEMA_VERSION
    return body


def record_from_dict(body: dict, where: str = MANIFEST_NAME) -> RunRecord:
    version = body.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise AffinaError(f"{where}: schema_version {version!r} is newer than this affina "
                          f"understands ({SCHEMA_VERSION}); upgrade affina")
    if version < 2:
        body = _upgrade_v1(body)
    for key in ("kind", "artifact", "base_model", "method"):
        if key not in body:
            raise AffinaError(f"{where}: run record lacks '{key}'")
    return _build(RunRecord, body, where)


def write_record(directory: Path, record: RunRecord) -> Path:
    path = Path(directory) / MANIFEST_NAME
    record.schema_version = SCHEMA_VERSION
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)  # never leave a half-written record
    return path


def read_record(directory: Path) -> RunRecord:
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise AffinaError(f"{directory} is not an affina run (no {MANIFEST_NAME})")
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AffinaError(f"{path}: corrupt run record ({e})") from None
    if not isinstance(body, dict):
        raise AffinaError(f"{path}: corrupt run record (not a JSON object)")
    return record_from_dict(body, str(path))


def read_run_config(directory: Path):
    """The `RunConfig` a run was started with (its `config.yaml`), or None when it has none;
    a malformed file is refused in one line naming it."""
    from ..config import config_from_dict, read_yaml_mapping

    path = Path(directory) / RUN_CONFIG_NAME
    if not path.is_file():
        return None
    return config_from_dict(read_yaml_mapping(path, "run config", "a run config must be a mapping"))


def is_run_dir(ref: str | Path) -> bool:
    return (Path(ref) / MANIFEST_NAME).is_file()


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("affina", "torch", "transformers", "peft", "accelerate", "datasets", "mlflow",
                 "tokenizers", "safetensors"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit(path: Path | None = None) -> str | None:
    """The commit of the git work tree the run was started from (with `+dirty`), if any."""
    try:
        cwd = str(path or Path.cwd())
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None
