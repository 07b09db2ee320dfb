"""Data-parallel (DDP) and sharded (FSDP2) training on torchrun, the launcher PyTorch ships.

`affina train` with `distributed.strategy=ddp|fsdp` on one machine starts itself under torchrun
(`launch`); on several machines, `affina train --print-launch` prints the command to run on each
(`launch_commands`). Inside a launched process the transformers Trainer does the distributed work
(accelerate underneath); the recipe asks `rank()` so that only rank 0 writes the run directory,
the record, the evaluations and the tracking, while every rank trains.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime

from ..config import RunConfig
from ..errors import ConfigError

__all__ = ["Rank", "rank", "launched", "init_process_group", "launch_commands", "launch", "nproc_per_node", "barrier",
           "trainer_arguments", "pin_run_name"]


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched() -> bool:
    """Whether torchrun (or accelerate launch) started this process."""
    return "LOCAL_RANK" in os.environ


def rank() -> Rank:
    """This process's place in a torchrun launch (rank 0 of 1 when not launched)."""
    env = os.environ
    return Rank(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def nproc_per_node(cfg: RunConfig) -> int:
    if cfg.distributed.nproc_per_node:
        return cfg.distributed.nproc_per_node
    import torch

    return torch.cuda.device_count() or 2


def pin_run_name(overrides: list[str], cfg: RunConfig) -> list[str]:
    """Every rank (and every machine) must write to the same run directory: name it now."""
    if cfg.train.run_name:
        return list(overrides)
    name = f"{cfg.method.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return [*overrides, f"train.run_name={name}"]


def launch_commands(cfg: RunConfig, train_args: list[str]) -> list[list[str]]:
    """One torchrun command per machine; `train_args` are `affina train`'s own arguments (the
    config file, overrides with the run name pinned, display options)."""
    d = cfg.distributed
    commands = []
    for node in range(d.nnodes):
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={d.nnodes}",
               f"--nproc-per-node={nproc_per_node(cfg)}"]
        if d.nnodes > 1:
            cmd += [f"--node-rank={node}", f"--master-addr={d.master_addr}", f"--master-port={d.master_port}"]
        else:
            cmd += ["--standalone"]  # a free rendezvous port on this machine
        commands.append([*cmd, "-m", "affina", "train", *train_args])
    return commands


def launch(cfg: RunConfig, train_args: list[str]) -> int:
    """Run this machine's training under torchrun (one machine only) and return its exit code."""
    if cfg.distributed.nnodes > 1:
        raise ConfigError(f"distributed.nnodes={cfg.distributed.nnodes}: start each machine's command "
                          "yourself; `affina train --print-launch` prints them")
    _check_fsdp_device(cfg)
    (command,) = launch_commands(cfg, train_args)
    from ..ui import info

    info("launching: " + shlex.join(command))
    return subprocess.run(command).returncode


def _check_fsdp_device(cfg: RunConfig, device_type: str | None = None) -> None:
    if cfg.distributed.strategy != "fsdp":
        return
    if device_type is None:
        import torch

        device_type = cfg.model.device if cfg.model.device != "auto" else (
            "cuda" if torch.cuda.is_available() else "cpu")
    if device_type != "cuda":
        raise ConfigError(f"distributed.strategy=fsdp shards over CUDA devices and this run is on "
                          f"{device_type}; use distributed.strategy=ddp here")


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def init_process_group(cfg: RunConfig) -> None:
    """Join the launch's process group now (rank 0 makes the run directory before the others
    read it); the Trainer reuses it."""
    if not launched():
        return
    from accelerate import PartialState

    backend = None if cfg.distributed.backend == "auto" else cfg.distributed.backend
    PartialState(backend=backend, cpu=cfg.model.device == "cpu")


def trainer_arguments(cfg: RunConfig, model, device_type: str) -> dict:
    """TrainingArguments for the strategy (none of them outside a launch)."""
    if not launched() or cfg.distributed.strategy == "none":
        return {}
    d = cfg.distributed
    args: dict = {"ddp_find_unused_parameters": d.find_unused_parameters}
    if d.backend != "auto":
        args["ddp_backend"] = d.backend
    elif device_type == "cpu":
        args["ddp_backend"] = "gloo"
    if d.strategy == "fsdp":
        _check_fsdp_device(cfg, device_type)
        blocks = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.endswith(
            ("DecoderLayer", "Block"))})
        args["fsdp"] = "full_shard auto_wrap"
        args["fsdp_config"] = {"fsdp_version": 2, "reshard_after_forward": True,
                               "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                               "transformer_layer_cls_to_wrap": blocks,
                               "state_dict_type": "FULL_STATE_DICT", "cpu_ram_efficient_loading": False}
    return args
