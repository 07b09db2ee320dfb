"""What every PEFT-backed method shares: wrap, save, load and merge through `peft` itself, so the
artifact is a plain PEFT directory (adapter_config.json + adapter_model.safetensors)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .base import Method, Sharing

__all__ = ["PeftArtifact", "LoraFamilyArtifact", "apply_peft", "save_peft", "load_peft", "merge_peft", "target_list",
           "continue_peft"]


def target_list(targets: list[str]):
    """`[all-linear]` → PEFT's "all-linear" shorthand; names otherwise."""
    return "all-linear" if list(targets) == ["all-linear"] else list(targets)


def apply_peft(model, peft_config):
    from peft import get_peft_model

    try:
        return get_peft_model(model, peft_config)
    except ValueError as e:  # e.g. target modules not found in the model
        raise ConfigError(f"method.target_modules: {str(e).splitlines()[0]}") from None


def save_peft(model, directory: Path) -> None:
    model.save_pretrained(directory)


def load_peft(base, directory: Path):
    from peft import PeftModel

    return PeftModel.from_pretrained(base, directory)


def continue_peft(model, directory: Path):
    """Load a saved adapter's weights into the freshly wrapped (trainable) PEFT model; every
    adapter weight must be found, so an adapter of another shape is refused, not half-loaded."""
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    weights = load_peft_weights(str(directory), device="cpu")
    result = set_peft_model_state_dict(model, weights)
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k or "ia3_" in k
               or "prompt" in k or "magnitude" in k]
    unexpected = list(getattr(result, "unexpected_keys", []))
    if missing or unexpected:
        raise ConfigError(f"{directory}: the earlier adapter does not fit this method's config "
                          f"({len(missing)} weights missing, {len(unexpected)} unexpected, e.g. "
                          f"{(missing + unexpected)[0]}); continue with the earlier run's method options")
    return model


def merge_peft(model):
    return model.merge_and_unload()


class PeftArtifact(Method):
    """Save, load and merge for a PEFT-backed method (the artifact is a plain PEFT directory);
    the method class adds its name, config and `apply`."""

    artifact_kind = "adapter"

    def save(self, model, directory: Path) -> None:
        save_peft(model, directory)

    def load(self, base, directory: Path):
        return load_peft(base, directory)

    def merge(self, model):
        return merge_peft(model)

    def continue_weights(self, model, cfg, directory: Path):
        return continue_peft(model, directory)


class LoraFamilyArtifact(PeftArtifact):
    """LoRA, DoRA, rsLoRA: adapters a server's one PeftModel holds many of, one per request."""

    shards_with_fsdp = True

    def sharing(self, cfg) -> Sharing:
        return Sharing.PEFT_ADAPTER
