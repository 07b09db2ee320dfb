"""A tiny run trained on product listings, served by a real server, and scripted traffic."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("drift_traffic", ROOT / "examples" / "drift" / "traffic.py")
traffic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(traffic)


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train_listing_run(tmp: Path, model_dir: Path, name: str, *extra: str) -> Path:
    """A LoRA run on 60 listing rows (a few steps: drift needs its data, not its quality)."""
    from affina.config import load_config
    from affina.train import train

    data = write_rows(tmp / f"{name}-train.jsonl", traffic.rows("listing", 60, seed=1))
    cfg = load_config(None, [f"model.spec={model_dir}", f"data.train={data}", f"train.output_dir={tmp}/runs",
                             f"train.run_name={name}", "train.max_steps=2", "method.r=2",
                             "eval.compare_base=false", *extra])
    return train(cfg, display="quiet").run_dir


def send(client, model: str, rows: list[dict], max_tokens: int = 8) -> list[str]:
    """Ask the server each row's prompt; the request ids, in order."""
    ids = []
    for row in rows:
        r = client.chat.completions.create(model=model, messages=traffic.chat(row), temperature=0,
                                           max_tokens=max_tokens)
        ids.append(r.id)
    return ids


@pytest.fixture(scope="session")
def talkative_model_dir(tmp_path_factory) -> Path:
    """A tiny model whose wide weight init makes its greedy replies varied words, not newlines
    (approving a reply needs one)."""
    from tests.helpers import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("talkative") / "tiny", seed=3, initializer_range=0.3)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """AFFINA_HOME and the tracking store in a throwaway directory for the module."""
    tmp = tmp_path_factory.mktemp("monitor")
    mp = pytest.MonkeyPatch()
    mp.setenv("AFFINA_HOME", str(tmp / "home"))
    mp.setenv("AFFINA_TRACKING_URI", f"sqlite:///{tmp}/ml.db")
    yield tmp
    mp.undo()
