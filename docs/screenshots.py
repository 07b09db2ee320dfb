"""Regenerate the dashboard screenshots in docs/images/ (docs/dashboard.md shows them).

    python docs/screenshots.py                   # the embedded default model (a few minutes on CPU)
    python docs/screenshots.py --model tiny      # the 2-layer test model, for a quick look
    python docs/screenshots.py --workdir /tmp/shots --keep   # keep (and next time reuse) the store

Trains two short LoRA runs on the product_json example (`alpha` 8 steps, `beta` 2),
registers them as `support`, promotes `support@1` to champion and tries `support@2` (the gate
decides), then starts a real `affina serve` over them, sends a few requests (one to a model that
does not exist), runs a fine-tuning job through the page where the server has the jobs API, and
photographs each page in headless Chromium (Playwright driving /usr/bin/chromium).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.dashboard.stores import CHROMIUM, CHROMIUM_ARGS, ServeProcess, build_store  # noqa: E402

EXAMPLE = ROOT / "examples" / "product_json"
PROMPTS = [("alpha", "Extract the product as JSON with keys brand, product, category, color, price.\n\n"
                     "Kestrel desk lamp in matte black, $24.50, like new."),
           ("base", "Extract the product as JSON with keys brand, product, category, color, price.\n\n"
                    "Kestrel desk lamp in matte black, $24.50, like new."),
           ("support@champion", "Extract the product as JSON with keys brand, product, category, color, "
                                "price.\n\nAcme garden hose, green, 19 dollars."),
           ("support@candidate", "Extract the product as JSON with keys brand, product, category, color, "
                                 "price.\n\nAcme garden hose, green, 19 dollars.")]


def make_store(workdir: Path, model: str) -> dict:
    if (workdir / "runs" / "alpha" / "affina.json").is_file():
        print(f"reusing the store in {workdir}", file=sys.stderr)
        return {"tmp": workdir, "store": workdir / "runs"}
    if model == "tiny":
        from tests.helpers import make_tiny_model

        spec = str(make_tiny_model(workdir / "tiny-model"))
        return build_store(workdir, spec)
    from affina.models import resolve_model_path

    spec = str(resolve_model_path(model))  # the converted model in the real cache, not the work dir's
    train_file, eval_file = workdir / "train.jsonl", workdir / "test.jsonl"
    shutil.copy(EXAMPLE / "train.jsonl", train_file)
    eval_file.write_text("".join((EXAMPLE / "test.jsonl").read_text().splitlines(keepends=True)[:4]))
    # Few, short steps: enough for a curve and a before/after change, minutes on a shared CPU.
    return build_store(workdir, spec, steps={"alpha": 8, "beta": 2}, train_file=train_file, eval_file=eval_file,
                       extra=("data.val_fraction=0.05", "data.max_length=128", "train.lr=2e-3",
                              "train.batch_size=4", "train.logging_steps=1", "train.eval_steps=4",
                              "train.save_steps=4", "method.r=8", "method.alpha=16",
                              "eval.metrics=[exact_match,json_valid,json_fields]", "eval.max_new_tokens=40",
                              "eval.batch_size=4"))


# The test model learned only "say the number i" → "number i".
TINY_PROMPTS = [("alpha", "say the number 7"), ("beta", "say the number 7"),
                ("support@champion", "say the number 12"), ("support@candidate", "say the number 12")]


def send_requests(server: ServeProcess, prompts) -> None:
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    for model, prompt in prompts:
        client.chat.completions.create(model=model, temperature=0, max_tokens=48,
                                       messages=[{"role": "user", "content": prompt}])
    try:
        client.chat.completions.create(model="support-v9", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    except openai.NotFoundError:
        pass


def jobs_api(server: ServeProcess) -> bool:
    import httpx

    return httpx.get(server.url + "/v1/fine_tuning/jobs", timeout=30).status_code != 404


def until(page, script: str, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not page.evaluate(script):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {script}")
        time.sleep(0.25)


def drawn(page) -> None:
    until(page, "(() => { const v = document.querySelector('main > .page');"
                " return !!v && v.dataset.hash === location.hash && v.dataset.ready === '1'; })()")


def photograph(server: ServeProcess, out: Path, workdir: Path, prompts) -> list[Path]:
    from playwright.sync_api import sync_playwright

    shots = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900}, device_scale_factor=1)

        def shot(name: str, hash_: str | None = None, full: bool = True) -> None:
            if hash_ is not None:
                page.goto(f"{server.url}/{hash_}")
                drawn(page)
            page.wait_for_timeout(300)
            path = out / f"dashboard-{name}.png"
            page.screenshot(path=str(path), full_page=full)
            shots.append(path)
            print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}", file=sys.stderr)

        if jobs_api(server):
            page.goto(f"{server.url}/#/jobs")
            drawn(page)
            data = workdir / "job-train.jsonl"
            data.write_text("".join((EXAMPLE / "train.jsonl").read_text().splitlines(keepends=True)[:48]))
            page.set_input_files("#job-file", str(data))
            page.fill("#job-epochs", "1")
            page.fill("#job-suffix", "products")
            page.click("#job-start")
            until(page, "document.querySelector('#job-form-state').textContent.startsWith('started ')")
            job = page.text_content("#job-form-state").split()[-1]
            page.goto(f"{server.url}/#/jobs/{job}")
            drawn(page)
            until(page, "['succeeded', 'failed', 'cancelled'].includes(document.querySelector('#job-title')?.dataset.status)",
                  timeout=1800)
            shot("job")
            shot("jobs", "#/jobs", full=False)
        shot("overview", "#/")
        shot("runs", "#/runs", full=False)
        shot("run", "#/runs/alpha")
        shot("registry", "#/registry")
        shot("lineage", "#/lineage?ref=support@champion")
        shot("requests", "#/requests", full=False)
        page.goto(f"{server.url}/#/playground?a={prompts[2][0]}&b={prompts[1][0]}")
        drawn(page)
        page.fill("#max-tokens", "48")
        page.fill("#prompt", prompts[2][1])
        page.click("#send")
        until(page, "document.querySelectorAll('.msg.assistant:not(.streaming)').length === 2", timeout=300)
        shot("playground", full=False)
        browser.close()
    return shots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="base model spec, or 'tiny' (default: default)")
    parser.add_argument("--workdir", type=Path, help="where the store, registry and logs go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (reused by the next run)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args()
    if not CHROMIUM.is_file():
        raise SystemExit(f"needs Chromium at {CHROMIUM} (apt-get install chromium)")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="affina-shots-"))
    workdir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    store = make_store(workdir, args.model)
    server = ServeProcess(workdir, store["store"], auth="open").wait_ready(timeout=600)
    try:
        prompts = TINY_PROMPTS if args.model == "tiny" else PROMPTS
        send_requests(server, prompts)
        photograph(server, args.out, workdir, prompts)
    finally:
        server.stop()
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
