"""Data-parallel (DDP) and sharded (FSDP2) training on torchrun, the launcher PyTorch ships, or
`accelerate launch` (torchrun underneath).

`affina train` with `distributed.strategy=ddp|fsdp` on one machine starts itself under the
launcher `distributed.launcher` names (`launch`); on several machines, `affina train
--print-launch` prints the command to run on each (`launch_commands`). Inside a launched process
the transformers Trainer does the distributed work (accelerate underneath); the recipe asks
`rank()` so that only rank 0 writes the run directory, the record, the evaluations and the
tracking, while every rank trains. A process started by a launcher run by hand (`torchrun ...
-m affina train`, `accelerate launch ... -m affina train`) is taken as it comes (`adopt_launch`): several processes train `ddp` when the config says none, `accelerate
launch`'s own settings (FSDP, bf16) become the config's or are refused in one line where affina
has its own way (DeepSpeed, fp16, whole-model compilation), and rank 0 names the run for all
(`shared_run_name`) when the config does not.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime

from ..config import RunConfig
from ..errors import ConfigError

__all__ = ["Rank", "rank", "launched", "init_process_group", "launch_commands", "launch", "nproc_per_node", "barrier",
           "trainer_arguments", "pin_run_name", "adopt_launch", "shared_run_name", "default_run_name"]


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


def default_run_name(cfg: RunConfig) -> str:
    """The run directory's name when train.run_name is empty: the method and the time."""
    return f"{cfg.method.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def pin_run_name(overrides: list[str], cfg: RunConfig) -> list[str]:
    """Every rank (and every machine) must write to the same run directory: name it now."""
    if cfg.train.run_name:
        return list(overrides)
    return [*overrides, f"train.run_name={default_run_name(cfg)}"]


def launch_commands(cfg: RunConfig, train_args: list[str]) -> list[list[str]]:
    """One launcher command per machine; `train_args` are `affina train`'s own arguments (the
    config file, overrides with the run name pinned, display options)."""
    d = cfg.distributed
    nproc = nproc_per_node(cfg)
    commands = []
    for node in range(d.nnodes):
        if d.launcher == "accelerate":
            # Precision and compilation are the run config's (train.mixed_precision,
            # train.profile): the launcher is told to add none of its own.
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                   f"--num_machines={d.nnodes}", f"--num_processes={nproc * d.nnodes}",
                   "--mixed_precision=no", "--dynamo_backend=no"]
            if d.nnodes > 1:
                cmd += [f"--machine_rank={node}", f"--main_process_ip={d.master_addr}",
                        f"--main_process_port={d.master_port}"]
            else:
                cmd += [f"--main_process_port={_free_port()}"]  # a free port on this machine
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={d.nnodes}", f"--nproc-per-node={nproc}"]
            if d.nnodes > 1:
                cmd += [f"--node-rank={node}", f"--master-addr={d.master_addr}", f"--master-port={d.master_port}"]
            else:
                cmd += ["--standalone"]  # a free rendezvous port on this machine
        commands.append([*cmd, "-m", "affina", "train", *train_args])
    return commands


def _free_port() -> int:
    """A port free on this machine now, for a one-machine accelerate launch."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _accelerate_launched() -> bool:
    """Whether `accelerate launch` started this process (its launchers set this; nothing else does)."""
    return "ACCELERATE_DYNAMO_USE_FULLGRAPH" in os.environ


def adopt_launch(cfg: RunConfig) -> RunConfig:
    """The config as the launcher that started this process has it train: several processes are
    data-parallel (`ddp`) when distributed.strategy says none; `accelerate launch --use_fsdp` is
    `fsdp`, its `--mixed_precision bf16` is train.mixed_precision=bf16 where that is `auto`. What
    affina does its own way is refused: DeepSpeed (FSDP2 shards here), fp16 and accelerate's fp8
    (bf16, or affina's fp8), whole-model compilation (train.profile=speed compiles the blocks),
    and settings that contradict the config. Not launched: the config as it is."""
    env = os.environ
    d, t = cfg.distributed, cfg.train
    strategy, precision = d.strategy, t.mixed_precision
    if _accelerate_launched():
        def on(key: str) -> bool:
            return env.get(key, "false").strip().lower() in ("1", "true", "yes")

        if on("ACCELERATE_USE_DEEPSPEED"):
            raise ConfigError("accelerate launch --use_deepspeed: affina shards with FSDP2; launch without "
                              "DeepSpeed and set distributed.strategy=fsdp")
        if on("ACCELERATE_USE_FSDP"):
            if strategy == "ddp":
                raise ConfigError("accelerate launch --use_fsdp and distributed.strategy=ddp disagree: set "
                                  "distributed.strategy=fsdp, or launch without --use_fsdp")
            strategy = "fsdp"
        dynamo = env.get("ACCELERATE_DYNAMO_BACKEND", "no").strip().lower()
        if dynamo not in ("", "no"):
            raise ConfigError(f"accelerate launch --dynamo_backend {dynamo} compiles the whole model; affina "
                              "compiles its decoder blocks under train.profile=speed: launch with "
                              "--dynamo_backend no")
        launched_precision = env.get("ACCELERATE_MIXED_PRECISION", "no").strip().lower()
        if launched_precision in ("fp16", "fp8"):
            raise ConfigError(f"accelerate launch --mixed_precision {launched_precision}: affina trains in bf16 "
                              "or its own fp8 (train.mixed_precision=bf16|fp8); launch with --mixed_precision no")
        if launched_precision == "bf16":
            if precision == "none":
                raise ConfigError("accelerate launch --mixed_precision bf16 and train.mixed_precision=none "
                                  "disagree: set train.mixed_precision=bf16, or launch with --mixed_precision no")
            precision = "bf16" if precision == "auto" else precision
    if strategy == "none" and launched() and rank().distributed:
        strategy = "ddp"
    if (strategy, precision) == (d.strategy, t.mixed_precision):
        return cfg
    from ..ui import info

    taken = [f"distributed.strategy={strategy}"] if strategy != d.strategy else []
    taken += [f"train.mixed_precision={precision}"] if precision != t.mixed_precision else []
    processes = rank().world_size
    info(f"launched with {processes} process{'es' if processes > 1 else ''}: {', '.join(taken)}")
    return dataclasses.replace(cfg, distributed=dataclasses.replace(d, strategy=strategy),
                               train=dataclasses.replace(t, mixed_precision=precision)).validate()


def shared_run_name(cfg: RunConfig) -> RunConfig:
    """Under a launch whose config names no run, rank 0 names it and the other ranks take that
    name, so that every rank (on every machine) writes one run directory."""
    if cfg.train.run_name or not rank().distributed:
        return cfg
    import torch.distributed as dist

    name = [default_run_name(cfg) if rank().main else None]
    dist.broadcast_object_list(name, src=0)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, run_name=name[0]))


def launch(cfg: RunConfig, train_args: list[str]) -> int:
    """Run this machine's training under the launcher (one machine only) and return its exit code."""
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
