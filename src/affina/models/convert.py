"""Turn a GGUF file into an ordinary safetensors model directory, once.

transformers reads GGUF (dequantising to float) but refuses to `save_pretrained` a GGUF-loaded
model, and re-reading the GGUF on every run costs ~30 s for SmolLM2-135M. So we read it once,
copy its weights into a plain model built from the same config, save that, check that the saved
copy generates exactly what the GGUF does, and only then publish the directory.

A directory is complete when it holds the marker file, written last; it is published by
renaming a temporary sibling into place, so a crash or a concurrent run never leaves a
half-written model where a later run would trust it.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from affina.errors import ModelError

__all__ = ["convert_gguf", "is_converted", "MARKER_NAME", "STOP_IDS_KEY"]

MARKER_NAME = ".affina-converted.json"
# GGUF metadata affina's exporter writes: every token id generation stops at (the model's EOS ids
# and its chat template's end of turn). GGUF's own keys hold one eos and one eot id only.
STOP_IDS_KEY = "affina.generation.stop_token_ids"
# Text the converted copy must tokenise identically and continue identically to the GGUF.
_CHECK_TEXT = "The capital of France is Paris. In 2024, 12 cats sat on 3 mats!\n<|im_start|>user\nHi"
_CHECK_PROMPT = "The capital of France is"
_CHECK_NEW_TOKENS = 8


def is_converted(out_dir: Path) -> bool:
    """True when `out_dir` is a finished conversion (cheap: one stat, no torch import)."""
    return (Path(out_dir) / MARKER_NAME).is_file()


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Convert `gguf_path` into a safetensors model directory at `out_dir`, unless done already."""
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if is_converted(out_dir):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # A unique sibling (not mkdtemp, whose 0700 would make a shared cache unreadable to others).
    tmp = out_dir.parent / f".{out_dir.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        print(f"affina: converting {gguf_path.name} into a safetensors model at {out_dir} "
              "(once; about 30 s for a 135M model)", file=sys.stderr, flush=True)
        start = time.perf_counter()
        _convert_into(gguf_path, tmp)
        seconds = time.perf_counter() - start
        marker = {
            "source": str(gguf_path),
            "source_size": gguf_path.stat().st_size,
            "transformers": _transformers_version(),
            "converted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(seconds, 1),
        }
        (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n")
        _apply_umask(tmp)
        _publish(tmp, out_dir)
        print(f"affina: converted {gguf_path.name} in {seconds:.0f} s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _convert_into(gguf_path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # transformers prefers tokenizer.json, tokenizer_config.json and config.json lying next to
    # the GGUF over the GGUF's own metadata (an exported OUT/model.gguf sits in the merged HF
    # directory), so it reads the file from a directory that holds nothing else.
    with tempfile.TemporaryDirectory(prefix="affina-gguf-") as alone:
        link = Path(alone) / gguf_path.name
        try:
            link.symlink_to(gguf_path.resolve())
        except OSError:  # no symlinks here (some filesystems): read it where it is
            link = gguf_path
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(link.parent), gguf_file=link.name)
            gguf_model = AutoModelForCausalLM.from_pretrained(str(link.parent), gguf_file=link.name,
                                                              dtype=torch.float32)
        except (ValueError, OSError, KeyError, ImportError) as e:
            raise ModelError(f"{gguf_path}: cannot read this GGUF file ({_first_line(e)})") from e
    gguf_model.eval()

    config = copy.deepcopy(gguf_model.config)
    # The GGUF loader marks the config as quantised; a plain float checkpoint must not say so,
    # or loading it would go looking for a GGUF file again.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = _generation_config(config, tokenizer, _stop_ids(gguf_path))
    model.save_pretrained(out)
    if tokenizer.model_max_length > config.max_position_embeddings:
        # GGUF carries no tokenizer limit, so transformers puts a huge sentinel there;
        # truncation should use the context the model was trained with.
        tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(out)  # keeps the chat template the GGUF carries
    del model
    _verify(gguf_model, tokenizer, out)


def _generation_config(config, tokenizer, stop_ids: list[int] | None = None):
    from transformers import GenerationConfig

    # Chat models end a turn with their eos (SmolLM2: <|im_end|>, id 2); generation must stop
    # there, and batches need a pad id, which these models do not distinguish from eos.
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else config.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    if stop_ids and len(stop_ids) > 1:  # a file that lists its whole stop set (affina's export)
        eos = [eos, *(i for i in stop_ids if i != eos)] if eos is not None else list(stop_ids)
    return GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=eos, pad_token_id=pad)


def _stop_ids(gguf_path: Path) -> list[int] | None:
    import gguf

    field = gguf.GGUFReader(str(gguf_path)).get_field(STOP_IDS_KEY)
    return [int(i) for i in field.contents()] if field is not None else None


def _verify(gguf_model, tokenizer, out: Path) -> None:
    """The saved copy must tokenise and generate exactly like the GGUF it came from."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reloaded_tokenizer = AutoTokenizer.from_pretrained(out)
    if reloaded_tokenizer(_CHECK_TEXT)["input_ids"] != tokenizer(_CHECK_TEXT)["input_ids"]:
        raise ModelError(f"converting to {out} failed: the saved tokenizer splits text differently")
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    if reloaded.config.tie_word_embeddings:
        head, embed = reloaded.get_output_embeddings().weight, reloaded.get_input_embeddings().weight
        if head is not embed and not torch.equal(head, embed):
            raise ModelError(f"converting to {out} failed: tied embeddings came back untied")
    prompt = tokenizer(_CHECK_PROMPT, return_tensors="pt")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        expected = gguf_model.generate(**prompt, max_new_tokens=_CHECK_NEW_TOKENS, do_sample=False,
                                       pad_token_id=pad)
        got = reloaded.generate(**prompt, max_new_tokens=_CHECK_NEW_TOKENS, do_sample=False,
                                pad_token_id=pad)
    if not torch.equal(expected, got):
        raise ModelError(f"converting to {out} failed: the saved model generates differently "
                         f"({tokenizer.decode(got[0])!r} vs {tokenizer.decode(expected[0])!r})")


def _publish(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        if is_converted(out_dir):
            return  # another process finished first; its copy is as good as ours
        shutil.rmtree(out_dir)  # no marker: an unfinished leftover nothing may trust
    try:
        os.replace(tmp, out_dir)
    except OSError:
        if not is_converted(out_dir):  # lost a race only if the winner's copy is complete
            raise


def _apply_umask(directory: Path) -> None:
    """Give saved files the modes the user's umask asks for: some writers create them 0600,
    which leaves a cache shared between users unreadable to all but one."""
    mode = directory.stat().st_mode & 0o666  # made by mkdir, so already 0777 & ~umask
    for path in directory.iterdir():
        os.chmod(path, mode)


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
