"""Training profiles (train/speed.py) on the CPU: the chunked loss is transformers' loss, with the
same gradients; PEFT's input cast is switched off only where it exists; the speed and memory
profiles, and the CPU default (chunked loss on), train a tiny run to the same losses and adapter
as the plain transformers step; bf16 autocast on the CPU is on only when asked for."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
import yaml
from peft import LoraConfig, PrefixTuningConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from affina.config import load_config
from affina.errors import ConfigError
from affina.record.run_record import RUN_CONFIG_NAME
from affina.train import train
from affina.record import read_record
from affina.train.speed import (decoder_blocks, _causal_lm, chunked_lm_loss, compile_blocks, fused_loss_available,
                                keep_input_dtype, mixed_precision_of, profile_of)


def _moving_b(model):
    for name, p in model.named_parameters():  # B starts at zero: move it so A gets gradients too
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    return model


def _lora(model_dir, **config):
    """LoRA r=4 on the tiny model (all linear layers, no dropout unless `config` says otherwise)."""
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = {"target_modules": "all-linear", "lora_dropout": 0.0, **config}
    return _moving_b(get_peft_model(base, LoraConfig(r=4, **config)))


def _lora_of_four_blocks(model_dir):
    """A random 4-block model of the tiny one's shape under LoRA, with the input cast off and no
    cache, as the speed profile trains: enough blocks to see whether compiled blocks share graphs."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    config.num_hidden_layers = 4
    config.use_cache = False  # as load_model(for_training=True) loads it: a cache recompiles per layer
    torch.manual_seed(0)
    model = _moving_b(get_peft_model(AutoModelForCausalLM.from_config(config),
                                     LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0)))
    keep_input_dtype(model)
    return model


def _batch(vocab: int):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (3, 11), generator=g)
    labels = ids.clone()
    labels[0, :4] = -100  # a masked prompt
    labels[2, 7:] = -100  # padding
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0
    return ids, mask, labels


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_chunked_loss_and_gradients_equal_transformers(tiny_model_dir, chunk):
    model = _lora(tiny_model_dir)
    ids, mask, labels = _batch(model.config.vocab_size)

    reference = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    reference.backward()
    expected = _grads(model)
    model.zero_grad()

    causal = _causal_lm(model)
    hidden = causal.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    loss = chunked_lm_loss(hidden, causal.get_output_embeddings().weight, labels, chunk_tokens=chunk)
    loss.backward()
    got = _grads(model)

    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    assert expected.keys() == got.keys() and len(got) > 0
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7)


def test_chunked_loss_trains_a_tied_output_layer_like_transformers(tiny_model_dir):
    """Full fine-tuning: the output layer's weight (tied to the input embeddings here) takes its
    gradient from the chunked loss, summed over the chunks, as from transformers' loss."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ids, mask, labels = _batch(model.config.vocab_size)
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    expected = _grads(model)
    model.zero_grad()
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    chunked_lm_loss(hidden, model.get_output_embeddings().weight, labels, chunk_tokens=4).backward()
    got = _grads(model)
    assert expected.keys() == got.keys() and "model.embed_tokens.weight" in got
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7)


class _CountMatmuls(TorchDispatchMode):
    """Counts the matmuls run under it; with `width`, only those whose result is that wide (the
    vocabulary's: the output projection)."""

    def __init__(self, width: int | None = None):
        super().__init__()
        self.width, self.count = width, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if (func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm)
                and (self.width is None or out.shape[-1] == self.width)):
            self.count += 1
        return out


def test_chunked_loss_projects_each_chunk_once(tiny_model_dir):
    """A chunk's logits are computed once, in the forward pass, with its gradient: the backward
    pass projects nothing again."""
    model = _lora(tiny_model_dir)
    ids, mask, labels = _batch(model.config.vocab_size)
    causal = _causal_lm(model)
    hidden = causal.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    counted = int((labels[:, 1:] != -100).sum())
    with _CountMatmuls(model.config.vocab_size) as counter:
        loss = chunked_lm_loss(hidden, causal.get_output_embeddings().weight, labels, chunk_tokens=8)
        loss.backward()
    assert counter.count == -(-counted // 8) > 1


def test_chunked_loss_under_bf16_autocast_is_as_close_to_fp32_as_the_recomputing_loss(tiny_model_dir):
    """Under bf16 autocast the projections run in bf16 and the softmax in fp32: the loss is the
    one of each chunk's plain cross-entropy recomputed in the backward pass (the checkpointed
    loss), and the gradients are as close to fp32's as that loss's are (both round the logits'
    gradient to bf16, at different points)."""
    from torch.utils.checkpoint import checkpoint

    from affina.models.lm_loss import chunk_cross_entropy, counted_positions

    model = _lora(tiny_model_dir)
    ids, mask, labels = _batch(model.config.vocab_size)
    causal = _causal_lm(model)
    weight = causal.get_output_embeddings().weight

    def run(loss_of, bf16=True):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            hidden = causal.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
            loss = loss_of(hidden)
        loss.backward()
        return loss.detach(), _grads(model)

    def recomputing(hidden):
        keep, y = counted_positions(labels)
        h = hidden[keep]
        return sum(checkpoint(chunk_cross_entropy, h[i:i + 8], weight, y[i:i + 8], use_reentrant=False)
                   for i in range(0, h.shape[0], 8)) / keep.sum()

    def chunked(hidden):
        return chunked_lm_loss(hidden, weight, labels, chunk_tokens=8)

    fp32, expected, got = run(chunked, bf16=False), run(recomputing), run(chunked)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-6, atol=0)
    assert fp32[1].keys() == got[1].keys() == expected[1].keys() and len(got[1]) > 0

    def error(grads):
        return sum((grads[n] - g).norm() ** 2 for n, g in fp32[1].items()).sqrt() / sum(
            g.norm() ** 2 for g in fp32[1].values()).sqrt()

    assert 0 < error(got[1]) < 1.25 * error(expected[1]) + 1e-4, (error(got[1]), error(expected[1]))


def test_chunked_loss_divides_by_the_accumulated_token_count(tiny_model_dir):
    model = _lora(tiny_model_dir)
    ids, mask, labels = _batch(model.config.vocab_size)
    counted = int((labels[:, 1:] != -100).sum())
    reference = model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=2 * counted).loss
    causal = _causal_lm(model)
    hidden = causal.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    loss = chunked_lm_loss(hidden, causal.get_output_embeddings().weight, labels, chunk_tokens=5,
                           num_items_in_batch=torch.tensor(2 * counted))
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)


def test_chunked_loss_of_fully_masked_batch_is_zero_with_a_graph(tiny_model_dir):
    model = _lora(tiny_model_dir)
    ids, mask, labels = _batch(model.config.vocab_size)
    causal = _causal_lm(model)
    hidden = causal.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    loss = chunked_lm_loss(hidden, causal.get_output_embeddings().weight, torch.full_like(labels, -100))
    loss.backward()  # no error: the zero still belongs to the graph
    assert loss.item() == 0.0


def test_prompt_learning_keeps_the_plain_loss(tiny_model_dir):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prefix = get_peft_model(base, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    assert _causal_lm(prefix) is None  # its virtual tokens go through the PEFT wrapper
    assert _causal_lm(_lora(tiny_model_dir)) is not None


def test_keep_input_dtype_switches_only_peft_layers(tiny_model_dir):
    model = _lora(tiny_model_dir)
    layers = [m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled")]
    assert keep_input_dtype(model) == len(layers) > 0
    assert not any(m.cast_input_dtype_enabled for m in layers)
    assert keep_input_dtype(model) == 0  # idempotent
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert keep_input_dtype(plain) == 0


def test_profiles_resolve_per_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not profile_of("default", cuda).chunked_loss
    assert profile_of("default", cpu).chunked_loss  # the CPU default: chunked loss on
    assert not profile_of("default", cpu, chunked_loss="false").chunked_loss
    assert not profile_of("speed", cuda, chunked_loss="false").chunked_loss
    assert not profile_of("speed", cuda, chunked_loss="false").fused_loss
    assert profile_of("default", cuda, chunked_loss="true").chunked_loss
    speed_cpu, speed_cuda = profile_of("speed", cpu), profile_of("speed", cuda, loss_chunk_tokens=256)
    assert speed_cpu.chunked_loss and not speed_cpu.compile_blocks
    assert speed_cuda.compile_blocks and speed_cuda.loss_chunk_tokens == 256
    assert not speed_cpu.fused_loss  # liger-kernel's fused loss is a CUDA kernel
    assert speed_cuda.fused_loss == fused_loss_available()
    memory_cpu = profile_of("memory", cpu)
    assert memory_cpu.checkpointing and not memory_cpu.offload_activations and not memory_cpu.host_embeddings
    assert profile_of("memory", cuda).offload_activations and profile_of("memory", cuda).host_embeddings
    assert not profile_of("speed", cuda).host_embeddings


def test_mixed_precision_resolves_per_device_and_weights():
    cpu, cuda, bf16, fp32 = torch.device("cpu"), torch.device("cuda"), torch.bfloat16, torch.float32
    assert mixed_precision_of("auto", cuda, bf16) and not mixed_precision_of("auto", cuda, fp32)
    assert not mixed_precision_of("auto", cpu, fp32)  # off on the CPU by default (docs/training.md)
    assert not mixed_precision_of("auto", cpu, bf16)
    assert mixed_precision_of("bf16", cpu, fp32) and not mixed_precision_of("none", cuda, bf16)
    assert profile_of("default", cpu, mixed_precision="bf16").bf16_autocast
    assert not profile_of("speed", cpu).bf16_autocast


@pytest.mark.parametrize("key, value, expected", [
    ("train.chunked_loss", "sometimes", "auto, true or false"),
    ("train.mixed_precision", "fp16", "auto, bf16, fp8, none"),
])
def test_bad_chunked_loss_or_mixed_precision_is_a_config_error(tiny_model_dir, key, value, expected):
    with pytest.raises(ConfigError, match=f"{key}.*{expected}"):
        load_config(None, [f"model.spec={tiny_model_dir}", f"{key}={value}"]).validate()


def test_chunked_loss_reads_yaml_booleans(tiny_model_dir):
    cfg = load_config(None, [f"model.spec={tiny_model_dir}", "train.chunked_loss=false"])
    assert cfg.train.chunked_loss == "false"


def test_unknown_profile_is_a_config_error(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match="train.profile.*default, speed, memory"):
        load_config(None, [f"model.spec={tiny_model_dir}", "train.profile=fast"]).validate()


def test_blocks_are_the_decoder_layers(tiny_model_dir):
    model = _lora(tiny_model_dir)
    blocks = decoder_blocks(model)
    assert len(blocks) == model.config.num_hidden_layers
    assert type(blocks[0]).__name__.endswith("DecoderLayer")


def test_compiled_blocks_have_no_graph_break_and_train_as_eager(tiny_model_dir):
    """The speed profile's regional compilation, traced through AOT autograd (the `aot_eager`
    backend: the graphs inductor would get, run by eager kernels, so no C++ build): every block
    is one graph, forward and backward, and the loss and the adapter's gradients equal eager ones
    with a masked prompt and padding in the batch."""
    from torch._dynamo.utils import counters

    model = _lora_of_four_blocks(tiny_model_dir)
    ids, mask, labels = _batch(model.config.vocab_size)
    expected = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    expected.backward()
    eager = _grads(model)
    model.zero_grad(set_to_none=True)
    torch._dynamo.reset()
    counters.clear()
    assert compile_blocks(model, backend="aot_eager") == model.config.num_hidden_layers
    for _ in range(2):  # the second step reuses the graphs: no recompilation
        model.zero_grad(set_to_none=True)
        got = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        got.backward()
    assert dict(counters["graph_break"]) == {}
    # Two graphs for four blocks: the first block's input needs no gradient (the embeddings are
    # frozen), every later block's does, and those share one graph rather than one each (32
    # blocks of one graph each would pass dynamo's recompile limit and run the rest eagerly).
    assert counters["stats"]["unique_graphs"] == 2
    assert torch.allclose(got, expected, rtol=1e-6, atol=1e-6)
    compiled = _grads(model)
    assert compiled.keys() == eager.keys() and len(eager) > 0
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-5, atol=1e-7)
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_blocks_give_the_same_loss(tiny_model_dir, tmp_path, monkeypatch):
    """Regional compilation on the CPU (inductor builds C++ here, hence slow)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    model = _lora(tiny_model_dir)
    ids, mask, labels = _batch(model.config.vocab_size)
    expected = model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
    assert compile_blocks(model) == model.config.num_hidden_layers
    got = model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
    assert got == pytest.approx(expected, rel=1e-5)


def _rows(path, n=16):
    rows = [{"messages": [{"role": "user", "content": f"say {i}"},
                          {"role": "assistant", "content": f"number {i} is {'even' if i % 2 == 0 else 'odd'}"}]}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run(tmp_path, model_dir, name, **extra):
    overrides = [f"model.spec={model_dir}", f"data.train={_rows(tmp_path / 'train.jsonl')}",
                 "data.val_fraction=0.25", f"train.output_dir={tmp_path / 'runs'}",
                 f"train.run_name={name}", "train.max_steps=4", "train.save_steps=4", "train.eval_steps=2",
                 "train.logging_steps=1", "train.batch_size=4", "train.lr=5e-3", "method.r=4",
                 "method.dropout=0", "track.mlflow=false", "model.device=cpu"]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    return train(load_config(None, overrides), display="quiet").run_dir


def _losses(run_dir, key):
    return [h[key] for h in json.loads((run_dir / "history.json").read_text()) if key in h]


def _same_run(plain, tuned):
    for key in ("loss", "eval_loss"):
        assert _losses(tuned, key) == pytest.approx(_losses(plain, key), rel=1e-4), key
    a = load_file(plain / "adapter" / "adapter_model.safetensors")
    b = load_file(tuned / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("profile", ["speed", "memory"])
def test_profiles_train_to_the_same_adapter_on_cpu(tmp_path, tiny_model_dir, profile):
    plain = _run(tmp_path, tiny_model_dir, "plain", **{"train.chunked_loss": "false"})
    fused = {"train.fuse_projections": "true"} if profile == "speed" else {}  # train/fused.py
    tuned = _run(tmp_path, tiny_model_dir, profile, **{"train.profile": profile, "train.loss_chunk_tokens": 7}, **fused)
    _same_run(plain, tuned)
    assert yaml.safe_load((tuned / RUN_CONFIG_NAME).read_text())["train"]["profile"] == profile
    assert read_record(tuned).train.fused_projections == (profile == "speed")
    assert not read_record(plain).train.fused_projections


def test_cpu_default_is_the_chunked_loss_with_the_plain_losses(tmp_path, tiny_model_dir):
    """The default profile on the CPU trains with the chunked loss (training and validation),
    to the losses and adapter of the plain transformers step, and records that it did."""
    plain = _run(tmp_path, tiny_model_dir, "plain", **{"train.chunked_loss": "false"})
    default = _run(tmp_path, tiny_model_dir, "default", **{"train.loss_chunk_tokens": 5})
    _same_run(plain, default)
    assert read_record(default).train.chunked_loss and not read_record(plain).train.chunked_loss
    assert read_record(default).train.mixed_precision == "none"


def test_bf16_autocast_on_cpu_when_asked(tmp_path, tiny_model_dir):
    """train.mixed_precision=bf16 autocasts the CPU step: the losses move by bf16 rounding only."""
    fp32 = _run(tmp_path, tiny_model_dir, "fp32")
    bf16 = _run(tmp_path, tiny_model_dir, "bf16", **{"train.mixed_precision": "bf16"})
    assert read_record(bf16).train.mixed_precision == "bf16"
    a, b = _losses(fp32, "loss"), _losses(bf16, "loss")
    assert a != b  # autocast did run in bf16
    assert b == pytest.approx(a, rel=3e-2)


@pytest.mark.parametrize("extra, expected", [
    (["train.profile=default"], "set train.profile=speed"),
    (["train.profile=speed", "train.grad_accum=2"], "train.grad_accum=1"),
    (["train.profile=speed", "distributed.strategy=ddp"], "one process"),
])
def test_cuda_graphs_settings_that_cannot_work_are_config_errors(tiny_model_dir, extra, expected):
    with pytest.raises(ConfigError, match=f"train.cuda_graphs.*{expected}"):
        load_config(None, [f"model.spec={tiny_model_dir}", "train.cuda_graphs=true", *extra])


def test_cuda_graphs_on_the_cpu_stop_with_a_config_error(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match="train.cuda_graphs needs a CUDA device; this run is on cpu"):
        _run(tmp_path, tiny_model_dir, "graphs", **{"train.profile": "speed", "train.cuda_graphs": "true"})


def test_cuda_graphs_pad_batches_to_a_few_lengths_and_mark_steps(tmp_path, tiny_model_dir):
    """Under train.cuda_graphs the recipe's Trainer pads every batch to a multiple of
    train.pad_to_multiple_of tokens (one recorded graph per length, not per batch) and marks each
    training and validation step's start for the graph trees."""
    from transformers import AutoTokenizer

    from affina.data.prepare import prepare_data
    from affina.methods import build_method_config, get_method
    from affina.train.recipe import _build_trainer
    from affina.train.speed import Profile

    cfg = load_config(None, [f"model.spec={tiny_model_dir}", f"data.train={_rows(tmp_path / 't.jsonl')}",
                             "data.val_fraction=0.25", "train.profile=speed", "train.cuda_graphs=true",
                             "train.pad_to_multiple_of=16", f"train.output_dir={tmp_path}", "train.max_steps=3",
                             "train.eval_steps=0", "train.batch_size=4", "track.mlflow=false"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    method = get_method("lora")
    method_cfg = build_method_config(method, {"r": 4})
    data = prepare_data(cfg.data, tokenizer, seed=0)
    model = _lora(tiny_model_dir)
    trainer = _build_trainer(model, tokenizer, data, cfg, tmp_path, [], method.collator(method_cfg, tokenizer),
                             method=method, method_cfg=method_cfg,
                             profile=Profile("speed", cuda_graphs=True, compile_blocks=True))
    widths = {b["input_ids"].shape[1] for b in trainer.get_train_dataloader()}
    assert widths and all(w % 16 == 0 for w in widths)
    assert max(len(e.input_ids) for e in data.train) <= max(widths) < max(len(e.input_ids) for e in data.train) + 16
    from torch._inductor.cudagraph_trees import MarkStepBox  # what cudagraph_mark_step_begin counts

    before = MarkStepBox.mark_step_counter
    trainer.train()
    assert MarkStepBox.mark_step_counter == before - 3  # the steps run eagerly here, marked all the same
    trainer.evaluate()
    assert MarkStepBox.mark_step_counter == before - 3 - len(trainer.get_eval_dataloader())


def test_cuda_graphs_with_a_method_of_its_own_trainer_stop_before_the_run(tmp_path, tiny_model_dir):
    from affina.train.recipe import validate_run_config

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    cfg = load_config(None, [f"model.spec={tiny_model_dir}", f"data.train={pairs}", "method.name=dpo",
                             "train.profile=speed", "train.cuda_graphs=true"])
    with pytest.raises(ConfigError, match="method dpo trains with a trainer of its own.*cuda_graphs=false"):
        validate_run_config(cfg)


def test_the_classifier_collator_pads_to_a_multiple_too():
    from affina.methods.head import ClassCollator, ClassExample

    batch = ClassCollator(0, pad_to_multiple_of=16)([ClassExample([5, 6, 7], 1), ClassExample([5] * 17, 0)])
    assert batch["input_ids"].shape == (2, 32)
    assert batch["attention_mask"].sum(dim=1).tolist() == [3, 17] and batch["labels"].tolist() == [1, 0]


def test_the_embedding_table_stays_where_it_is_on_the_cpu(tiny_model_dir):
    """`embeddings_to_host` moves a table from a GPU to host memory; on the CPU the table is in
    host memory already: nothing moves and no hook is added (tests/gpu has the move itself)."""
    from transformers import AutoModelForCausalLM

    from affina.train.speed import embeddings_from_host, embeddings_to_host

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, tie_word_embeddings=False).requires_grad_(False)
    table = model.get_input_embeddings()
    assert table.weight is not model.get_output_embeddings().weight
    assert embeddings_to_host(model) == 0 and not hasattr(table, "host_lookup")
    assert not table._forward_hooks and not table._forward_pre_hooks
    assert embeddings_from_host(model) == 0


def test_offload_copies_activations_and_keeps_parameters(tiny_model_dir):
    """The memory profile's offload hook: a saved activation goes out as a copy and comes back
    equal; a saved parameter (the output layer's weight, which a plain output projection saves)
    is kept, not copied; a checkpointed step under the hook has the plain step's loss and
    gradients."""
    from affina.train.speed import save_activations_on_cpu

    model = _lora(tiny_model_dir)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    hook = save_activations_on_cpu()
    weight = _causal_lm(model).get_output_embeddings().weight
    assert hook.pack_hook(weight) == (None, weight) and hook.unpack_hook((None, weight)) is weight
    activation = torch.randn(3, 4)
    device, packed = hook.pack_hook(activation)
    assert packed.untyped_storage().data_ptr() != activation.untyped_storage().data_ptr()
    assert torch.equal(hook.unpack_hook((device, packed)), activation)

    ids, mask, labels = _batch(model.config.vocab_size)
    causal = _causal_lm(model)

    def step():
        model.zero_grad(set_to_none=True)
        hidden = causal.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        loss = chunked_lm_loss(hidden, causal.get_output_embeddings().weight, labels, chunk_tokens=8)
        loss.backward()
        return loss.detach(), _grads(model)

    expected = step()
    with save_activations_on_cpu():
        got = step()
    torch.testing.assert_close(got[0], expected[0])
    assert got[1].keys() == expected[1].keys() and len(got[1]) > 0
    for name in expected[1]:
        torch.testing.assert_close(got[1][name], expected[1][name])
