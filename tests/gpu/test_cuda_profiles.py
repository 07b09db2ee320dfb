"""The training profiles and FSDP2 on a CUDA device (skipped without one; see tests/conftest.py).

On the CPU the profiles are checked against the default step to float rounding
(tests/train/test_speed.py); here they run in bf16 with compiled blocks and CPU offload, so the
check is that they train, stay close to the default run, and leave an adapter plain PEFT loads.
FSDP2 needs CUDA devices; one GPU gives a world of one rank, which still shards through FSDP2's
DTensors and gathers them to save.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from affina.record import read_record

from tests.gpu.test_cuda_training import _check_losses, _data, _losses, _reloads_with_plain_peft, _train
from tests.helpers import make_tiny_model

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("profile", ["speed", "memory"])
def test_profile_trains_like_the_default_step_on_cuda(tmp_path, profile):
    """Untied embeddings, so that the memory profile keeps the input table in host memory."""
    model_dir = make_tiny_model(tmp_path / "untied", tie_word_embeddings=False)
    plain = _train(tmp_path, model_dir, "plain", "method.dropout=0")
    tuned = _train(tmp_path, model_dir, profile, "method.dropout=0", f"train.profile={profile}",
                   "train.loss_chunk_tokens=16")
    _check_losses(tuned)
    assert _losses(tuned)[0] == pytest.approx(_losses(plain)[0], rel=2e-2)  # bf16, same first batch
    _reloads_with_plain_peft(tuned, model_dir)


def test_the_memory_profile_keeps_an_untied_frozen_embedding_table_in_host_memory(tmp_path, tiny_model_dir):
    """The table moves to host memory and the lookups are the same rows, on the GPU; a table
    tied to the output layer or one that trains stays; restoring puts the table back and removes
    the hooks."""
    from transformers import AutoModelForCausalLM

    from affina.train.speed import embeddings_from_host, embeddings_to_host

    untied = make_tiny_model(tmp_path / "untied", tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_pretrained(untied, dtype=torch.bfloat16).cuda().requires_grad_(False)
    table = model.get_input_embeddings()
    weight = table.weight
    ids = torch.randint(0, model.config.vocab_size, (2, 9), device="cuda")
    expected = model(input_ids=ids).logits
    before = torch.cuda.memory_allocated()
    moved = embeddings_to_host(model)
    assert moved == weight.numel() * 2 and weight.device.type == "cpu"
    assert torch.cuda.memory_allocated() <= before - moved
    rows = table(ids)
    assert rows.is_cuda and torch.equal(rows, table.weight[ids.cpu()].cuda())
    torch.testing.assert_close(model(input_ids=ids).logits, expected, rtol=0, atol=0)
    assert embeddings_to_host(model) == 0  # once
    assert embeddings_from_host(model) == moved
    assert table.weight is weight and weight.is_cuda and not hasattr(table, "host_lookup")
    assert not table._forward_hooks and not table._forward_pre_hooks

    tied = AutoModelForCausalLM.from_pretrained(tiny_model_dir).cuda().requires_grad_(False)
    assert embeddings_to_host(tied) == 0 and tied.get_input_embeddings().weight.is_cuda
    model.get_input_embeddings().weight.requires_grad_(True)
    assert embeddings_to_host(model) == 0


def test_fp8_base_trains_like_bf16_on_cuda(tmp_path, tiny_model_dir):
    """train.mixed_precision=fp8 on a card with fp8 tensor cores, compiled blocks included: the run
    trains close to bf16, records fp8, and leaves a plain adapter."""
    from affina.train.fp8 import fp8_supported

    why = fp8_supported(torch.device("cuda"))
    if why:
        pytest.skip(why)
    plain = _train(tmp_path, tiny_model_dir, "plain", "method.dropout=0", "train.profile=speed")
    fp8 = _train(tmp_path, tiny_model_dir, "fp8", "method.dropout=0", "train.profile=speed",
                 "train.mixed_precision=fp8")
    _check_losses(fp8)
    assert json.loads((fp8 / "affina.json").read_text())["train"]["mixed_precision"] == "fp8"
    assert _losses(fp8)[0] == pytest.approx(_losses(plain)[0], rel=2e-2)
    _reloads_with_plain_peft(fp8, tiny_model_dir)


def test_fp8_layers_train_with_their_bf16_weights_in_host_memory(tiny_model_dir):
    """While training, an fp8 layer's bf16 weight waits in host memory (the GPU holds the fp8
    copies); the step still runs, and restoring brings back the same parameters with the same
    values on the GPU."""
    from affina.train.fp8 import Fp8Linear, fp8_base_layers, fp8_supported, offload_weights, restore_linear
    from affina.train.speed import decoder_blocks
    from tests.train.test_speed import _batch, _lora

    why = fp8_supported(torch.device("cuda"))
    if why:
        pytest.skip(why)
    model = _lora(tiny_model_dir).to("cuda", torch.bfloat16)
    params = dict(model.named_parameters())
    values = {n: p.detach().clone() for n, p in params.items()}
    fp8_base_layers(decoder_blocks(model))
    layers = [m for m in model.modules() if isinstance(m, Fp8Linear)]
    before = torch.cuda.memory_allocated()
    moved = offload_weights(model)
    assert moved == sum(m.weight.numel() * 2 for m in layers) > 0
    assert all(m.weight.device.type == "cpu" and m.fp8_weight.is_cuda for m in layers)
    assert torch.cuda.memory_allocated() <= before - moved
    ids, mask, labels = (t.cuda() for t in _batch(model.config.vocab_size))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in params.values() if p.requires_grad)
    assert restore_linear(model) == len(layers)
    assert all(p is params[n] and p.is_cuda and torch.equal(p, values[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("precision, fused", [("bf16", False), ("fp8", False), ("fp8", True)])
def test_cuda_graphs_train_like_the_speed_profile(tmp_path, tiny_model_dir, precision, fused):
    """train.cuda_graphs: the compiled blocks replay as CUDA graphs through training, validation
    inside training (every 4 steps, inference graphs of their own) and checkpoints, then the run
    evaluates eagerly; the losses follow the speed profile's run without graphs. With
    train.fuse_projections too, the siblings' hand-over inside the recorded graphs."""
    if precision == "fp8":
        from affina.train.fp8 import fp8_supported

        if fp8_supported(torch.device("cuda")):
            pytest.skip(fp8_supported(torch.device("cuda")))
    common = ("method.dropout=0", "train.profile=speed", f"train.mixed_precision={precision}",
              "train.eval_steps=4", "train.save_steps=6", "train.logging_steps=1")
    plain = _train(tmp_path, tiny_model_dir, "speed", *common)
    graphs = _train(tmp_path, tiny_model_dir, "graphs", *common, "train.cuda_graphs=true",
                    f"train.fuse_projections={str(fused).lower()}")
    _check_losses(graphs)
    assert read_record(graphs).train.fused_projections is fused
    # Padding to multiples of 64 changes no loss (masked positions), so the first steps agree to
    # the rounding of compiled kernels.
    assert _losses(graphs)[:3] == pytest.approx(_losses(plain)[:3], rel=2e-2)
    history = json.loads((graphs / "history.json").read_text())
    assert len([h for h in history if "eval_loss" in h]) >= 3
    _reloads_with_plain_peft(graphs, tiny_model_dir)


def test_fsdp_trains_and_saves_a_whole_adapter(tmp_path, tiny_model_dir):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
               AFFINA_HOME=str(tmp_path / "home"))
    out = subprocess.run([sys.executable, "-m", "affina", "train", "-q", f"model.spec={tiny_model_dir}",
                          "model.device=cuda", f"data.train={_data(tmp_path)}", "data.val_fraction=0.25",
                          f"train.output_dir={tmp_path / 'runs'}", "train.run_name=fsdp",
                          "train.max_steps=12", "train.save_steps=6", "train.batch_size=8", "train.lr=1e-2",
                          "track.mlflow=false", "distributed.strategy=fsdp", "distributed.nproc_per_node=1"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    run = tmp_path / "runs" / "fsdp"
    _check_losses(run)
    record = json.loads((run / "affina.json").read_text())
    assert record["train"]["global_step"] == 12
    assert not (run / "adapter" / "training_args.bin").exists()
    _reloads_with_plain_peft(run, tiny_model_dir)
    from safetensors.torch import load_file

    saved = load_file(run / "adapter" / "adapter_model.safetensors")
    hidden = json.loads((Path(tiny_model_dir) / "config.json").read_text())["hidden_size"]
    a = [v for k, v in saved.items() if "q_proj.lora_A" in k]
    assert a and a[0].shape[1] == hidden  # whole tensors, not one rank's shard


def test_fused_loss_equals_the_chunked_loss(tiny_model_dir):
    from affina.train.speed import chunked_lm_loss, fused_loss_available

    if not fused_loss_available():
        pytest.skip("liger-kernel is not installed (pip install 'affina[gpu]')")
    torch.manual_seed(0)
    hidden = torch.randn(2, 64, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weight = (torch.randn(1000, 128, device="cuda", dtype=torch.bfloat16) * 0.05).requires_grad_()
    labels = torch.randint(0, 1000, (2, 64), device="cuda")
    labels[0, :10] = -100
    results = []
    for fused in (False, True):
        loss = chunked_lm_loss(hidden, weight, labels, chunk_tokens=16, fused=fused)
        grads = torch.autograd.grad(loss, (hidden, weight))
        results.append((loss.float(), [g.float() for g in grads]))
    (plain, plain_grads), (fused, fused_grads) = results
    torch.testing.assert_close(fused, plain, rtol=1e-2, atol=1e-2)
    for a, b in zip(fused_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-3)
