"""Tiny tracked runs in a throwaway MLflow store, shared by the registry and history tests."""

from __future__ import annotations

import json
from contextlib import contextmanager

import pytest

from affina.config import load_config
from affina.train import train


@contextmanager
def tracked_runs(tmp, model_dir, steps: dict[str, int], *extra: str):
    """Train one run per `steps` entry (name → max_steps) on 8 prompt/completion rows, tracked in
    `tmp`'s own MLflow store (AFFINA_TRACKING_URI and AFFINA_HOME point there while in use)."""
    uri = f"sqlite:///{tmp}/ml.db"
    mp = pytest.MonkeyPatch()
    mp.setenv("AFFINA_TRACKING_URI", uri)
    mp.setenv("AFFINA_HOME", str(tmp / "home"))
    data = tmp / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"say {i}", "completion": f"number {i}"}) + "\n"
                            for i in range(8)))
    try:
        runs = {}
        for name, n in steps.items():
            cfg = load_config(None, [f"model.spec={model_dir}", f"data.train={data}",
                                     f"train.output_dir={tmp}/runs", f"train.run_name={name}",
                                     f"train.max_steps={n}", f"track.uri={uri}", f"eval.data={data}",
                                     "eval.compare_base=false", *extra])
            runs[name] = train(cfg).run_dir
        yield {"tmp": tmp, "uri": uri, "data": data, **runs}
    finally:
        mp.undo()
