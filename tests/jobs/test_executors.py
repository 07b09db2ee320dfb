"""The executor choice's one-line errors: Ray not installed, no address, an address where no
cluster answers (from `affina jobs worker` and `affina serve`, exit code 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from affina.errors import AffinaError
from tests.serve.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_ray_executor_without_ray_says_what_to_install(monkeypatch):
    from affina.jobs.executors import make_executor

    monkeypatch.setitem(sys.modules, "ray.job_submission", None)  # import fails as if absent
    with pytest.raises(AffinaError, match=r"pip install 'affina\[ray\]'"):
        make_executor("ray", ray_address="http://127.0.0.1:8265")


def test_local_is_the_default_executor():
    from affina.jobs.executors import LocalExecutor, make_executor

    assert isinstance(make_executor("local"), LocalExecutor)
    with pytest.raises(AffinaError, match="local, ray"):
        make_executor("slurm")


@pytest.mark.parametrize("command", [["jobs", "worker", "--db", "sqlite:///{tmp}/q.db"],
                                     ["serve", "--base", "{tmp}/none", "--workers", "1"]])
def test_an_unreachable_ray_address_is_one_line_and_exit_2(tmp_path, command):
    pytest.importorskip("ray.job_submission", reason="Ray is not installed: pip install 'affina[ray]'")
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    args = [a.format(tmp=tmp_path) for a in command] + ["--executor", "ray", "--ray-address", address]
    env = {**os.environ, "AFFINA_HOME": str(tmp_path / "home"),
           "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-m", "affina", *args], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("affina: error: cannot reach Ray's job submission API at "
                                                   f"{address}"), done.stderr
    assert "--ray-address" in lines[0]


def test_ray_executor_needs_an_address(monkeypatch):
    pytest.importorskip("ray.job_submission", reason="Ray is not installed: pip install 'affina[ray]'")
    from affina.jobs.executors import make_executor

    with pytest.raises(AffinaError, match="--ray-address http://HEAD:8265"):
        make_executor("ray", ray_address=None)
