"""The run directory: created with its config and inputs before anything trains, re-read on
`--resume`, and the checkpoint a resumed run continues from."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ..config import RunConfig, config_to_dict
from ..data.templates import looks_like_template, template_text
from ..errors import AffinaError, ConfigError
from ..record import MANIFEST_NAME, RUN_CONFIG_NAME, data_file, read_run_config, write_inputs
from ..record.datafiles import resolve_inputs
from ..ui import info, warn
from .distributed import default_run_name

__all__ = ["CONFIG_NAME", "config_of_run", "make_run_dir", "resume_point", "resume_checkpoint",
           "chosen_checkpoint", "split_resume_target"]

CONFIG_NAME = RUN_CONFIG_NAME


def split_resume_target(path: Path, checkpoint: str | None) -> tuple[Path, str | None]:
    """`--resume RUN_DIR/checkpoints/checkpoint-N` is `--resume RUN_DIR --checkpoint checkpoint-N`."""
    path = Path(path)
    if path.parent.name == "checkpoints" and path.name.startswith("checkpoint-"):
        if checkpoint not in (None, path.name):
            raise AffinaError(f"--resume names {path.name} and --checkpoint names {checkpoint}; give one")
        return path.parent.parent, path.name
    return path, checkpoint


def config_of_run(run_dir: Path) -> RunConfig:
    """The config saved in a run, its data paths re-resolved from the run directory (absolute,
    else relative to the run) and checked against the sha256 recorded when the run started."""
    cfg = read_run_config(run_dir)
    if cfg is None:
        raise AffinaError(f"cannot resume: {run_dir / CONFIG_NAME} not found (is {run_dir} a run "
                          "directory?)")
    resolved = resolve_inputs(run_dir)
    if resolved:
        cfg.data.train = resolved.get("train", [])
        cfg.data.validation = resolved.get("validation", [])
        cfg.eval.data = resolved.get("eval", [])
        if cfg.data.mix:  # same order as written by make_run_dir
            cfg.data.mix = [{"path": p, "weight": w} for p, (_, w)
                            in zip(resolved.get("mix", []), cfg.data.mix_entries())]
    return cfg


def resume_point(run_dir: Path, checkpoint: str | None = None) -> str:
    """The checkpoint a resumed run continues from: the named one, else the newest intact one.
    Refused in one line when there is none, or when the run already finished from it."""
    ckpt = chosen_checkpoint(run_dir, checkpoint) if checkpoint else resume_checkpoint(run_dir)
    if ckpt is None:
        raise AffinaError(f"cannot resume: {run_dir} has no intact checkpoint yet; start it again "
                          f"with the same train.run_name (the directory is reused)")
    state = json.loads((Path(ckpt) / "trainer_state.json").read_text())
    if (run_dir / MANIFEST_NAME).exists() and 0 < state.get("max_steps", 0) <= state.get("global_step", 0):
        # The trainer would take one step past the end from a final checkpoint.
        raise AffinaError(f"cannot resume: {run_dir} already finished (step {state['global_step']} "
                          f"of {state['max_steps']}); start a new run to train further")
    return ckpt


def make_run_dir(cfg: RunConfig) -> Path:
    """A new run directory with `config.yaml` (data paths absolute, a chat template file inlined)
    and `inputs.json` (each data file's absolute path, path relative to the run, sha256). A
    directory left by a run that failed before its first checkpoint is reused; one with a
    checkpoint or a finished record is not."""
    name = cfg.train.run_name or default_run_name(cfg)
    run_dir = Path(cfg.train.output_dir) / name
    if (run_dir / MANIFEST_NAME).exists() or any((run_dir / "checkpoints").glob("checkpoint-*")):
        raise ConfigError(f"run directory {run_dir} already holds a run; pick another train.run_name "
                          f"or continue it with --resume {run_dir}")
    if (run_dir / CONFIG_NAME).exists():
        info(f"reusing {run_dir}: its earlier attempt stopped before the first checkpoint")
    run_dir.mkdir(parents=True, exist_ok=True)
    mix = cfg.data.mix_entries()
    files = ([data_file(p, "train", run_dir) for p in cfg.data.train]
             + [data_file(p, "mix", run_dir) for p, _ in mix]
             + [data_file(p, "validation", run_dir) for p in cfg.data.validation]
             + [data_file(p, "eval", run_dir) for p in cfg.eval.data])
    saved = config_to_dict(cfg)
    by_role = {role: [f.path for f in files if f.role == role]
               for role in ("train", "mix", "validation", "eval")}
    saved["data"]["train"], saved["data"]["validation"] = by_role["train"], by_role["validation"]
    saved["eval"]["data"] = by_role["eval"]
    if mix:
        saved["data"]["mix"] = [{"path": p, "weight": w} for p, (_, w) in zip(by_role["mix"], mix)]
    template = cfg.data.chat_template
    if template and not looks_like_template(template):
        # The run stays self-contained: its config holds the template text, not a path to it.
        saved["data"]["chat_template"] = template_text(template)[0]
    (run_dir / CONFIG_NAME).write_text(yaml.safe_dump(saved, sort_keys=False, width=1000))
    write_inputs(run_dir, files)
    return run_dir


def _checkpoint_problem(ckpt: Path) -> str | None:
    """Why a checkpoint cannot be resumed from (its trainer state or weights unreadable), or None."""
    try:
        json.loads((ckpt / "trainer_state.json").read_text())
        weights = [p for p in ckpt.iterdir() if p.suffix in (".safetensors", ".bin")]
        if not weights or any(p.stat().st_size == 0 for p in weights):
            raise ValueError("no weights")
        for p in weights:
            if p.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(p), framework="pt"):
                    pass
    except Exception as e:  # noqa: BLE001 — any unreadable piece makes the checkpoint unusable
        return type(e).__name__
    return None


def resume_checkpoint(run_dir: Path) -> str | None:
    """The newest checkpoint that is intact; a newer, truncated one (a kill while it was
    written) is skipped with a warning."""
    checkpoints = sorted((Path(run_dir) / "checkpoints").glob("checkpoint-*"),
                         key=lambda p: int(p.name.rsplit("-", 1)[-1]) if p.name.rsplit("-", 1)[-1].isdigit() else -1,
                         reverse=True)
    for ckpt in checkpoints:
        problem = _checkpoint_problem(ckpt)
        if problem is None:
            return str(ckpt)
        warn(f"skipping checkpoint {ckpt.name}: it is incomplete or corrupt ({problem})")
    return None


def chosen_checkpoint(run_dir: Path, name: str) -> str:
    """The checkpoint the user named (`checkpoint-N`), refused in one line if missing or corrupt."""
    ckpt = Path(run_dir) / "checkpoints" / Path(name).name
    if not ckpt.is_dir():
        have = sorted(p.name for p in (Path(run_dir) / "checkpoints").glob("checkpoint-*"))
        raise AffinaError(f"cannot resume: {ckpt} not found; {run_dir} has "
                          + (", ".join(have) if have else "no checkpoints"))
    problem = _checkpoint_problem(ckpt)
    if problem is not None:
        raise AffinaError(f"cannot resume from {ckpt}: it is incomplete or corrupt ({problem})")
    return str(ckpt)
