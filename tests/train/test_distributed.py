"""Distributed training on the CPU with real torchrun processes and the gloo backend: the launch
commands, DDP with 2 x batch 4 against one process with batch 8 (started by affina, and by
`accelerate launch` run by hand), a rank killed mid-run and the run resumed on a different number
of processes, and one writer (rank 0) of the record and MLflow."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from affina.config import load_config
from affina.errors import ConfigError
from affina.record import read_record
from affina.train import train
from affina.train.distributed import _free_port

ROOT = Path(__file__).resolve().parents[2]


def _data(path: Path, n=32) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"say {i}"},
                          {"role": "assistant", "content": f"number {i} is {'even' if i % 2 == 0 else 'odd'}"}]}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _overrides(tmp_path, model_dir, name, **extra) -> list[str]:
    keys = {"model.spec": model_dir, "data.train": _data(tmp_path / "train.jsonl"),
            "data.val_fraction": 0, "train.output_dir": tmp_path / "runs", "train.run_name": name,
            "train.max_steps": 3, "train.batch_size": 8, "train.lr": 5e-3, "train.logging_steps": 1,
            "train.save_steps": 100, "method.r": 4, "method.dropout": 0, "track.mlflow": "false",
            "model.device": "cpu"}
    keys.update(extra)
    if keys.get("method.name", "lora") != "lora":
        del keys["method.r"], keys["method.dropout"]
    return [f"{k}={v}" for k, v in keys.items()]


def _env(tmp_path) -> dict:
    env = dict(os.environ, AFFINA_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def _affina(tmp_path, *args, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "affina", *args], env=_env(tmp_path), cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout, **kw)


def test_print_launch_gives_one_command_per_machine_with_one_run_name(tmp_path, tiny_model_dir):
    out = _affina(tmp_path, "train", *_overrides(tmp_path, tiny_model_dir, "x")[:-1],
                  "train.run_name=", "distributed.strategy=ddp", "distributed.nnodes=2",
                  "distributed.nproc_per_node=4", "distributed.master_addr=10.1.2.3", "--print-launch")
    assert out.returncode == 0, out.stderr
    commands = [line for line in out.stdout.splitlines() if not line.startswith("#")]
    assert len(commands) == 2
    names = set()
    for node, command in enumerate(commands):
        assert "-m torch.distributed.run" in command and "--nnodes=2" in command
        assert f"--node-rank={node}" in command and "--master-addr=10.1.2.3" in command
        assert "--nproc-per-node=4" in command and "-m affina train" in command
        names |= {part for part in command.split() if part.startswith("train.run_name=lora-")}
    assert len(names) == 1  # every machine writes the same run directory
    assert not (tmp_path / "runs").exists()  # printing trains nothing


def test_print_launch_with_accelerate(tmp_path, tiny_model_dir):
    out = _affina(tmp_path, "train", *_overrides(tmp_path, tiny_model_dir, "x"), "distributed.strategy=ddp",
                  "distributed.launcher=accelerate", "distributed.nnodes=2", "distributed.nproc_per_node=4",
                  "distributed.master_addr=10.1.2.3", "distributed.master_port=29511", "--print-launch")
    assert out.returncode == 0, out.stderr
    commands = [line for line in out.stdout.splitlines() if not line.startswith("#")]
    assert len(commands) == 2
    for node, command in enumerate(commands):
        assert "-m accelerate.commands.launch --multi_gpu --num_machines=2 --num_processes=8" in command
        assert "--mixed_precision=no --dynamo_backend=no" in command  # the run config decides both
        assert f"--machine_rank={node} --main_process_ip=10.1.2.3 --main_process_port=29511" in command
        assert "-m affina train" in command and "train.run_name=x" in command
    with pytest.raises(ConfigError, match="distributed.launcher"):
        load_config(None, ["distributed.launcher=mpirun"])


def test_two_machines_on_loopback_train_one_run(tmp_path, tiny_model_dir, monkeypatch):
    """The two commands --print-launch gives for two machines (one process each), run side by
    side on this one, with either launcher: one run directory, two ranks, the adapter of one
    process with twice the batch."""
    monkeypatch.setenv("AFFINA_HOME", str(tmp_path / "home"))
    single = train(load_config(None, _overrides(tmp_path, tiny_model_dir, "single")), display="quiet").run_dir
    a = load_file(single / "adapter" / "adapter_model.safetensors")
    for launcher in ("torchrun", "accelerate"):
        name = f"two-{launcher}"
        out = _affina(tmp_path, "train", "-q", *_overrides(tmp_path, tiny_model_dir, name, **{
            "train.batch_size": 4, "distributed.strategy": "ddp", "distributed.launcher": launcher,
            "distributed.nnodes": 2, "distributed.nproc_per_node": 1, "distributed.master_port": _free_port()}),
            "--print-launch")
        assert out.returncode == 0, out.stderr
        commands = [line for line in out.stdout.splitlines() if not line.startswith("#")]
        machines = [subprocess.Popen(shlex.split(command), env=_env(tmp_path), cwd=tmp_path, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True) for command in commands]
        outputs = [machine.communicate(timeout=300)[0] for machine in machines]
        assert [m.returncode for m in machines] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
        record = read_record(tmp_path / "runs" / name)
        assert record.train.world_size == 2 and record.train.global_step == 3
        b = load_file(tmp_path / "runs" / name / "adapter" / "adapter_model.safetensors")
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)


def _accelerate_launch(tmp_path, *launch_args, overrides):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines=1",
               "--num_processes=2", "--main_process_port=0", *launch_args, "-m", "affina", "train", "-q", *overrides]
    return subprocess.run(command, env=_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_accelerate_launch_by_hand_trains_ddp_in_one_run(tmp_path, tiny_model_dir, monkeypatch):
    """`accelerate launch --multi_gpu --num_processes 2 -m affina train ...` with a config that names
    neither a strategy nor a run: the two processes train data-parallel into one run directory
    (rank 0 names it), the same adapter as one process with twice the batch."""
    monkeypatch.setenv("AFFINA_HOME", str(tmp_path / "home"))
    single = train(load_config(None, _overrides(tmp_path, tiny_model_dir, "single")), display="quiet").run_dir
    overrides = [o for o in _overrides(tmp_path, tiny_model_dir, "", **{"train.batch_size": 4})
                 if not o.startswith("train.run_name=")]
    out = _accelerate_launch(tmp_path, "--mixed_precision=no", "--dynamo_backend=no", overrides=overrides)
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p != single]
    record = read_record(run)
    assert record.train.world_size == 2 and record.train.global_step == 3
    assert load_config(run / "config.yaml").distributed.strategy == "ddp"  # as it trained, for --resume
    a = load_file(single / "adapter" / "adapter_model.safetensors")
    b = load_file(run / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5)


def test_accelerate_launch_settings_affina_does_its_own_way_are_refused(tmp_path, tiny_model_dir):
    out = _accelerate_launch(tmp_path, "--mixed_precision=fp16", "--dynamo_backend=no",
                             overrides=_overrides(tmp_path, tiny_model_dir, "fp16"))
    assert out.returncode != 0
    line = ("affina: error: accelerate launch --mixed_precision fp16: affina trains in bf16 or its own fp8 "
            "(train.mixed_precision=bf16|fp8); launch with --mixed_precision no")
    assert line in out.stderr.splitlines()
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def _launched_by_accelerate(monkeypatch, world_size=2, **settings):
    for key in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": str(world_size),
                       "ACCELERATE_DYNAMO_USE_FULLGRAPH": "False", "ACCELERATE_DYNAMO_BACKEND": "NO",
                       "ACCELERATE_MIXED_PRECISION": "no", **settings}.items():
        monkeypatch.setenv(key, value)


def test_adopting_a_launch(monkeypatch):
    from affina.train.distributed import adopt_launch

    cfg = load_config(None, [])
    assert adopt_launch(cfg) is cfg  # not launched
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")  # torchrun's two processes
    assert adopt_launch(cfg).distributed.strategy == "ddp"
    assert adopt_launch(load_config(None, ["distributed.strategy=fsdp"])).distributed.strategy == "fsdp"

    _launched_by_accelerate(monkeypatch, ACCELERATE_MIXED_PRECISION="bf16", ACCELERATE_USE_FSDP="true")
    adopted = adopt_launch(cfg)
    assert (adopted.distributed.strategy, adopted.train.mixed_precision) == ("fsdp", "bf16")
    with pytest.raises(ConfigError, match="fp8 keeps whole fp8 copies"):  # fsdp's own limits still hold
        adopt_launch(load_config(None, ["train.mixed_precision=fp8"]))
    for overrides, message in (
            (["distributed.strategy=ddp"], "--use_fsdp and distributed.strategy=ddp disagree"),
            (["train.mixed_precision=none"], "--mixed_precision bf16 and train.mixed_precision=none disagree")):
        with pytest.raises(ConfigError, match=message):
            adopt_launch(load_config(None, overrides))
    _launched_by_accelerate(monkeypatch, world_size=1, ACCELERATE_USE_DEEPSPEED="true")
    with pytest.raises(ConfigError, match="affina shards with FSDP2"):
        adopt_launch(cfg)
    _launched_by_accelerate(monkeypatch, world_size=1, ACCELERATE_DYNAMO_BACKEND="INDUCTOR")
    with pytest.raises(ConfigError, match="launch with --dynamo_backend no"):
        adopt_launch(cfg)
    _launched_by_accelerate(monkeypatch, world_size=1)
    assert adopt_launch(cfg) is cfg  # one process, the launcher's defaults: nothing to adopt
    _launched_by_accelerate(monkeypatch, world_size=1, ACCELERATE_MIXED_PRECISION="bf16")
    fp8 = load_config(None, ["train.mixed_precision=fp8"])
    assert adopt_launch(fp8) is fp8  # bf16 autocast is part of fp8 already


def test_launch_errors_are_one_line(tmp_path, tiny_model_dir):
    out = _affina(tmp_path, "train", *_overrides(tmp_path, tiny_model_dir, "x"), "--print-launch")
    assert out.returncode == 2 and "--print-launch needs distributed.strategy" in out.stderr
    out = _affina(tmp_path, "train", *_overrides(tmp_path, tiny_model_dir, "x"), "distributed.strategy=fsdp")
    assert out.returncode == 2 and "use distributed.strategy=ddp here" in out.stderr
    assert "Traceback" not in out.stderr
    with pytest.raises(ConfigError, match="distributed.strategy"):
        load_config(None, ["distributed.strategy=zero3"])


def test_ddp_two_ranks_of_batch_4_equal_one_process_of_batch_8(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("AFFINA_HOME", str(tmp_path / "home"))
    single = train(load_config(None, _overrides(tmp_path, tiny_model_dir, "single")), display="quiet").run_dir

    out = _affina(tmp_path, "train", "-q", *_overrides(tmp_path, tiny_model_dir, "ddp", **{
        "train.batch_size": 4, "distributed.strategy": "ddp", "distributed.nproc_per_node": 2,
        "track.mlflow": "true"}))
    assert out.returncode == 0, out.stderr[-3000:]
    ddp = tmp_path / "runs" / "ddp"
    record = read_record(ddp)
    assert record.train.world_size == 2 and record.train.global_step == 3

    a = load_file(single / "adapter" / "adapter_model.safetensors")
    b = load_file(ddp / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:  # same examples per step, gradients averaged over the same tokens
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5)
    losses = [[h["loss"] for h in json.loads((run / "history.json").read_text()) if "loss" in h]
              for run in (single, ddp)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    tokens = [[h["num_input_tokens_seen"] for h in json.loads((run / "history.json").read_text())
               if "loss" in h] for run in (single, ddp)]
    assert tokens[1] == tokens[0] and tokens[0][-1] > 0  # the count is summed over the ranks

    import mlflow

    mlflow.set_tracking_uri(_tracking_uri(tmp_path))
    runs = mlflow.search_runs(experiment_names=["affina"], filter_string="tags.`affina.method` = 'lora'",
                              output_format="list")
    assert [r.info.run_id for r in runs if r.data.tags.get("affina.run_dir") == str(ddp.resolve())] \
        == [record.mlflow_run_id]  # one tracked run: only rank 0 logs


def _tracking_uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"


def test_killed_rank_leaves_a_run_that_resumes_on_one_process(tmp_path, tiny_model_dir, monkeypatch):
    overrides = _overrides(tmp_path, tiny_model_dir, "killed", **{
        "train.batch_size": 2, "train.max_steps": 60, "train.save_steps": 5,
        "distributed.strategy": "ddp", "distributed.nproc_per_node": 2})
    proc = subprocess.Popen([sys.executable, "-m", "affina", "train", "-q", *overrides], env=_env(tmp_path),
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = tmp_path / "runs" / "killed"
    deadline = time.time() + 240
    while not list((run / "checkpoints").glob("checkpoint-*/trainer_state.json")):
        assert proc.poll() is None and time.time() < deadline, "no checkpoint before the end"
        time.sleep(0.05)
    victims = [p for p in psutil.Process(proc.pid).children(recursive=True)
               if p.environ().get("RANK") == "1"]
    assert victims, "rank 1 not found"
    victims[0].send_signal(signal.SIGKILL)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert not (run / "affina.json").exists()  # the run did not finish

    monkeypatch.setenv("AFFINA_HOME", str(tmp_path / "home"))
    result = train(load_config(), resume=run, display="quiet")  # one process resumes two ranks' run
    assert result.record.train.global_step == 60 and result.record.train.world_size == 1
    steps = [h["step"] for h in json.loads((run / "history.json").read_text()) if "loss" in h]
    assert steps[-1] == 60 and steps[0] <= 5  # the history goes on from the kept checkpoint


@pytest.mark.parametrize("method", ["prefix", "full"])
def test_other_methods_train_under_ddp(tmp_path, tiny_model_dir, method):
    """A prompt-learning wrapper and a whole-model method (the LoRA family is above)."""
    out = _affina(tmp_path, "train", "-q", *_overrides(tmp_path, tiny_model_dir, method, **{
        "method.name": method, "train.batch_size": 4, "distributed.strategy": "ddp",
        "distributed.nproc_per_node": 2}))
    assert out.returncode == 0, out.stderr[-3000:]
    record = read_record(tmp_path / "runs" / method)
    assert record.method.name == method and record.train.world_size == 2


def test_fp8_base_and_fused_projections_train_under_ddp(tmp_path, tiny_model_dir):
    """train.mixed_precision=fp8 under DDP, in the speed profile with sibling projections fused: the
    fp8 weight copies are no state DDP syncs, the fused weights' slices take its broadcast, and the
    ranks train and save a plain adapter."""
    out = _affina(tmp_path, "train", "-q", *_overrides(tmp_path, tiny_model_dir, "fp8", **{
        "train.batch_size": 4, "train.mixed_precision": "fp8", "train.profile": "speed",
        "train.fuse_projections": "true", "distributed.strategy": "ddp", "distributed.nproc_per_node": 2}))
    assert out.returncode == 0, out.stderr[-3000:]
    record = read_record(tmp_path / "runs" / "fp8")
    assert record.train.mixed_precision == "fp8" and record.train.world_size == 2
    assert record.train.fused_projections
    assert (tmp_path / "runs" / "fp8" / "adapter" / "adapter_model.safetensors").exists()
