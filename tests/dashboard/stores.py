"""A model store of tiny trained runs with a registry and promotion decisions, a real
`affina serve` process over it, and the Chromium to look at it with: what the dashboard tests
(and docs/screenshots.py) use."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
# The system Chromium, driven by Playwright (whose own browser download is never used).
CHROMIUM = Path(os.environ.get("AFFINA_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chat_rows(n: int, start: int = 0) -> str:
    return "".join(json.dumps({"messages": [{"role": "user", "content": f"say the number {i}"},
                                            {"role": "assistant", "content": f"number {i}"}]}) + "\n"
                   for i in range(start, start + n))


def environment(tmp: Path) -> dict[str, str]:
    """The variables that point affina's home and registry into `tmp`."""
    return {"AFFINA_HOME": str(tmp / "home"), "AFFINA_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}


@contextmanager
def patched_env(values: dict[str, str]):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def build_store(tmp: Path, model_spec: str, *, steps: dict[str, int] | None = None,
                train_file: Path | None = None, eval_file: Path | None = None,
                extra: tuple[str, ...] = ()) -> dict:
    """Train one run per `steps` entry into `tmp/runs` (with a validation split and a before/after
    evaluation), register them all as `support`, promote the first to `champion` (compared with the
    base), try to promote the second (refused or promoted by the gate) and tag it `candidate`.
    Without `train_file`/`eval_file`, 20 and 4 rows of "say the number i" → "number i"."""
    from affina.config import load_config
    from affina.govern.promote import promote
    from affina.govern.registry import register_run, set_alias
    from affina.train import train

    steps = steps or {"alpha": 12, "beta": 2}
    data, evaluation = train_file or tmp / "train.jsonl", eval_file or tmp / "eval.jsonl"
    if train_file is None:
        data.write_text(chat_rows(20))
    if eval_file is None:
        evaluation.write_text(chat_rows(4, start=40))
    out = {"tmp": tmp, "store": tmp / "runs", "data": data, "eval": evaluation, "runs": {}}
    with patched_env(environment(tmp)):
        for name, n in steps.items():
            cfg = load_config(None, [f"model.spec={model_spec}", f"data.train={data}", "data.val_fraction=0.2",
                                     f"train.output_dir={tmp}/runs", f"train.run_name={name}",
                                     f"train.max_steps={n}", "train.lr=1e-2", "train.batch_size=4",
                                     "train.logging_steps=2", "train.eval_steps=4", "train.save_steps=4",
                                     f"eval.data={evaluation}", "eval.metrics=[exact_match,token_f1]",
                                     "eval.max_new_tokens=6", "method.r=4", *extra])
            out["runs"][name] = train(cfg).run_dir
        names = list(steps)
        for name in names:
            register_run(out["runs"][name], "support", metric="loss")
        out["decisions"] = [promote("support@1", "champion")]
        if len(names) > 1:
            out["decisions"].append(promote("support@2", "champion"))
            set_alias("support@2", "candidate")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """`python -m affina serve` in its own process on a free loopback port."""

    def __init__(self, tmp: Path, store: Path, *, auth: str = "open", base: str | None = None,
                 extra: tuple[str, ...] = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmp, self.log_url = tmp, f"sqlite:///{tmp}/requests.db"
        self.keys_db = tmp / "keys.db"
        args = [sys.executable, "-m", "affina", "serve", "--store", str(store), "--port", str(self.port),
                "--log-db", self.log_url, "--keys-db", str(self.keys_db), "--auth", auth,
                "--device", "cpu", "--threads", "1", "--max-tokens-limit", "256", *extra]
        if base:
            args += ["--base", base]
        env = {**os.environ, **environment(tmp),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.output = open(tmp / "serve.log", "wb")
        self.proc = subprocess.Popen(args, stdout=self.output, stderr=subprocess.STDOUT, env=env, cwd=tmp)

    def wait_ready(self, timeout: float = 180) -> "ServeProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"affina serve exited ({self.proc.returncode}):\n{self.log_text()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"affina serve did not become ready:\n{self.log_text()}")

    def log_text(self) -> str:
        self.output.flush()
        return (self.tmp / "serve.log").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.output.close()
