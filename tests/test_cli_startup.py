"""What every command pays before it runs: no heavy import to build the parser, `--version`,
and a pipe closed by the reader (`affina logs --jsonl | head`) ends quietly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import affina

SRC = str(Path(affina.__file__).resolve().parent.parent)


def _python(code: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120, **kw)


def test_building_the_parser_imports_no_heavy_library():
    out = _python("import affina.cli, sys; affina.cli.build_parser(); "
                  "print('torch' in sys.modules, 'transformers' in sys.modules, "
                  "'peft' in sys.modules, 'mlflow' in sys.modules, 'fastapi' in sys.modules)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False"] * 5


def test_help_and_version_import_no_heavy_library():
    for argv in (["--help"], ["train", "--help"], ["--version"], ["no-such-command"]):
        out = _python("import sys, affina.cli\n"
                      f"try:\n    affina.cli.main({argv!r})\nexcept SystemExit:\n    pass\n"
                      "print('heavy', 'torch' in sys.modules or 'transformers' in sys.modules)")
        assert out.stdout.strip().endswith("heavy False"), (argv, out.stdout, out.stderr)
    version = _python(f"import affina.cli; affina.cli.main(['--version'])")
    assert version.stdout.strip() == f"affina {affina.__version__}"


def test_reader_closing_the_pipe_early_exits_0_without_traceback(tmp_path):
    from affina.record.requestlog import LogEntry, RequestLog

    url = f"sqlite:///{tmp_path / 'requests.db'}"
    log = RequestLog(url)
    for i in range(300):
        log.write(LogEntry(request_id=f"r{i}", endpoint="chat", status=200, latency_ms=1.0,
                           model="m", response="x" * 200))
    log.close()
    reader = subprocess.Popen(["head", "-n", "1"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    env = {**os.environ, "PYTHONPATH": SRC}
    writer = subprocess.run([sys.executable, "-m", "affina.cli", "logs", "--db", url, "--jsonl"],
                            stdout=reader.stdin, stderr=subprocess.PIPE, text=True, env=env, timeout=120)
    reader.stdin.close()
    reader.wait()
    assert writer.returncode == 0, writer.stderr
    assert "Traceback" not in writer.stderr and "BrokenPipe" not in writer.stderr


def test_tables_written_to_a_pipe_keep_every_key_on_one_line(capsys):
    import re

    from affina.cli import main
    from affina.config import describe_keys

    from affina.ui import print_table

    assert main(["config"]) == 0
    out = capsys.readouterr().out  # captured: not a terminal
    for key, _, _ in describe_keys():
        assert re.search(r"│ " + re.escape(key) + r"\s", out), key
    # Wider than 80 columns: a key and a meaning that a terminal-width table would fold.
    long_key = "method.target_modules_" + "x" * 50
    print_table("t", ["key", "meaning"], [[long_key, "word " * 30]])
    assert long_key in capsys.readouterr().out


def test_streamed_pieces_make_up_the_reply(tiny_model_dir):
    from affina.evaluate.generation import generate_texts
    from affina.models import load_model

    loaded = load_model(str(tiny_model_dir), device="cpu")
    prompt = loaded.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                  add_generation_prompt=True)
    pieces: list[str] = []
    streamed = generate_texts(loaded.model, loaded.tokenizer, [prompt], max_new_tokens=8,
                              on_text=pieces.append)
    plain = generate_texts(loaded.model, loaded.tokenizer, [prompt], max_new_tokens=8)
    assert streamed == plain
    assert len(pieces) > 1 and "".join(pieces).strip() == plain[0]  # piece by piece, not at the end
