"""The README's everyday commands run as written, on a tiny model, run and data set; and
`make demo` trains the run those commands name (runs/demo)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def everyday_commands() -> list[str]:
    section = README.split("## Everyday commands", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines()
            if line.strip().startswith("affina ")]


def test_readme_and_makefile_agree_on_runs_demo(tmp_path):
    assert "runs/lora-" not in README
    assert any("runs/demo" in c for c in everyday_commands())
    recipe = subprocess.run(["make", "-n", "-o", "setup", "demo"], cwd=ROOT, capture_output=True, text=True)
    assert "train.run_name=demo" in recipe.stdout
    # A finished runs/demo: make demo names it and the way out, and trains nothing.
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "affina.json").write_text("{}")
    done = subprocess.run(["make", "-f", str(ROOT / "Makefile"), "-o", "setup", "demo"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert "runs/demo already holds a finished demo run" in done.stderr and "DEMO_NAME=" in done.stderr


SKIP = {"chat": "interactive", "train --resume": "needs an interrupted run",
        "monitor": "needs served traffic (tests/monitor runs it)",
        "feedback": "needs feedback on served requests (tests/monitor runs it)",
        "advise": "minutes of training; tests/govern/test_advise.py runs a whole advice",
        "train -c run.yaml train.profile=speed train.mixed_precision=fp8": "needs an H100/H200 (tests/gpu)"}


@pytest.mark.slow
def test_everyday_commands_run(tmp_path, tiny_model_dir, monkeypatch, capsys):
    from affina.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AFFINA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AFFINA_TRACKING_URI", f"sqlite:///{tmp_path}/ml.db")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"say {i}", "output": f"number {i}"}) + "\n"
                            for i in range(12)))
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(f"data: {{train: [{data}], val_fraction: 0.25, max_length: 64}}\n"
                        f"model: {{spec: {tiny_model_dir}}}\nmethod: {{name: lora, r: 2}}\n"
                        "train: {output_dir: runs, max_steps: 2, eval_steps: 1, save_steps: 2}\n"
                        f"eval: {{data: [{data}], max_new_tokens: 4, limit: 4}}\n")
    space = tmp_path / "sweep.yaml"
    space.write_text("objective: validation_loss\npruner: {name: none}\nparams:\n"
                     "  train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n")
    assert main(["train", "-c", str(run_yaml), "train.run_name=demo"]) == 0  # what make demo makes
    swaps = [(r"\bdefault\b", str(tiny_model_dir)), (r"other-model/", str(tiny_model_dir)),
             (r"\b(data|val|test)\.jsonl\b", str(data)), (r"examples/product_json/sweep\.yaml", str(space)),
             (r"--trials \d+", "--trials 1"), (r"products@2", "products@1"),
             (r"--store runs$", "--store runs --print-vllm"),
             (r"\bmanual/", str(ROOT / "examples" / "product_manual" / "docs")),
             (r"\bquestions\.jsonl\b", str(ROOT / "examples" / "product_manual" / "questions.jsonl"))]
    ran = []
    for command in everyday_commands():
        if any(command.startswith(f"affina {s}") for s in SKIP):
            continue
        for pattern, value in swaps:
            command = re.sub(pattern, value, command)
        code = main(shlex.split(command)[1:]) if command != "affina --version" else _version(main)
        capsys.readouterr()
        assert code == 0, f"{command} exited {code}"
        ran.append(command)
    assert len(ran) >= 15


def _version(main) -> int:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    return done.value.code or 0
