"""The `affina` command. Each sub-command parses its arguments and calls one recipe function."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import AffinaError

__all__ = ["main", "build_parser", "COMMAND_MODULES"]

# Command groups that live beside their own code: each module has `register(subparsers)` and
# sets `func` on its parsers. Adding a command group is one module and one line here.
COMMAND_MODULES: tuple[str, ...] = (
    "affina.evaluate.commands",
    "affina.tune.commands",
    "affina.serve.commands",
    "affina.export_commands",
    "affina.govern.commands",
    "affina.jobs.commands",
    "affina.bias.commands",
    "affina.monitor.commands",
    "affina.rag.commands",
    "affina.govern.advise_commands",
)


def _cmd_train(args) -> int:
    from .config import load_config
    from .train import train
    from .ui import set_output

    from .train import distributed

    display = "quiet" if args.quiet else args.log_format
    set_output({"bar": "normal", "jsonl": "jsonl", "quiet": "quiet"}[display]
               if distributed.rank().main else "quiet")  # one rank speaks for a distributed run
    shown = ["-q"] if args.quiet else ["--log-format", args.log_format]
    if args.resume:
        if args.config or args.overrides or args.continue_from:
            raise AffinaError("--resume continues a run with the config saved in it; "
                              "drop -c and key=value overrides")
        from .train.rundir import config_of_run, split_resume_target

        cfg = config_of_run(split_resume_target(Path(args.resume), args.checkpoint)[0])
        own = ["--resume", args.resume, *(["--checkpoint", args.checkpoint] if args.checkpoint else [])]
        if cfg.distributed.strategy != "none" and not distributed.launched():
            return _launch(cfg, [*own, *shown], args.print_launch)
        train(load_config(), resume=Path(args.resume), checkpoint=args.checkpoint, display=display)
        return 0
    from .methods import method_field_names

    overrides = list(args.overrides)
    if args.continue_from:
        overrides.append(f"train.continue_from={args.continue_from}")
    cfg = load_config(args.config, overrides, method_field_names)
    if cfg.distributed.strategy != "none" and not distributed.launched():
        overrides = distributed.pin_run_name(overrides, cfg)
        own = [*(["-c", args.config] if args.config else []), *overrides, *shown]
        return _launch(load_config(args.config, overrides, method_field_names), own, args.print_launch)
    if args.print_launch:
        raise AffinaError("--print-launch needs distributed.strategy=ddp or fsdp")
    earlier = _earlier_model(cfg.train.continue_from) if cfg.train.continue_from else None
    train(cfg, display=display, earlier=earlier)
    return 0


def _launch(cfg, train_args: list[str], print_only: bool) -> int:
    """Start `affina train` under torchrun on this machine, or print each machine's command."""
    import shlex

    from .train import distributed

    if print_only:
        commands = distributed.launch_commands(cfg, train_args)
        for node, command in enumerate(commands):
            if len(commands) > 1:
                print(f"# machine {node} (node rank {node})")
            print(shlex.join(command))
        return 0
    return distributed.launch(cfg, train_args)


def _earlier_model(text: str):
    """`train.continue_from` resolved: a registry reference (its files verified, and the
    evaluation sets registered with its name), else a run directory."""
    from .govern.registry import eval_data_of, parse_ref, resolve_ref, show_model
    from .train.continual import EarlierModel

    if parse_ref(text) is not None and not Path(text).exists():
        version = resolve_ref(text)
        return EarlierModel(version.run_dir, given=text, ref=version.ref,
                            eval_sets=eval_data_of(show_model(version.name)["tags"]))
    return EarlierModel.of_run_dir(text)


def _cmd_data_inspect(args) -> int:
    from .data.inspect import inspect_data

    inspect_data(args.files, format=args.format, model_spec=args.model, max_length=args.max_length,
                 train_on_prompt=args.train_on_prompt)
    return 0


def _open(ref: str):
    from .govern.registry import resolve_model_ref
    from .runs import open_model

    return open_model(resolve_model_ref(ref))


def _reply(opened, messages: list[dict], args, on_text=None) -> str:
    """One reply by the shared generation routine and stop rule (what the server does too);
    `on_text` gets its pieces as they are generated."""
    from .evaluate.generation import generate_texts

    prompt = opened.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return generate_texts(opened.model, opened.tokenizer, [prompt], max_new_tokens=args.max_new_tokens,
                          do_sample=args.temperature > 0, temperature=args.temperature or 1.0,
                          top_p=args.top_p, seed=args.seed, stop_ids=opened.stop_ids,
                          on_text=on_text)[0]


class _Printer:
    """Prints a streamed reply as it comes, without the leading whitespace the returned reply
    is stripped of."""

    def __init__(self):
        self.started = False

    def __call__(self, piece: str) -> None:
        if not self.started:
            piece = piece.lstrip()
            self.started = bool(piece)
        print(piece, end="", flush=True)


def _cmd_generate(args) -> int:
    opened = _open(args.ref)
    messages = ([{"role": "system", "content": args.system}] if args.system else [])
    messages.append({"role": "user", "content": args.prompt})
    print(_reply(opened, messages, args))
    return 0


def _cmd_chat(args) -> int:
    opened = _open(args.ref)
    messages = ([{"role": "system", "content": args.system}] if args.system else [])
    print(f"chatting with {args.ref} — empty line or Ctrl-D to quit, /reset to start over")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if not line:
            return 0
        if line == "/reset":
            messages = messages[:1] if args.system else []
            continue
        messages.append({"role": "user", "content": line})
        print("model> ", end="", flush=True)
        reply = _reply(opened, messages, args, on_text=_Printer())
        messages.append({"role": "assistant", "content": reply})
        print()


def _cmd_methods(args) -> int:
    from .methods import get_method, method_names, trainable_footprint
    from .ui import print_table

    if args.describe:
        method = get_method(args.describe)
        from .methods import describe_fields

        print_table(f"method {method.name}: {method.description}", ["key", "default", "meaning"],
                    [list(r) for r in describe_fields(method)])
        return 0
    if not args.model:
        rows = [[name, get_method(name).description] for name in method_names()]
        print_table("methods", ["name", "description"], rows)
        return 0
    rows = [[r["name"], f"{r['trainable']:,}", f"{r['percent']:.3f}%", r["memory"]]
            for r in trainable_footprint(args.model)]
    print_table(f"methods on {args.model} (default settings; state = weights+grads+AdamW)",
                ["name", "trainable params", "% of total", "trainable state"], rows)
    return 0


def _cmd_config(args) -> int:
    from .config import describe_keys
    from .ui import print_table

    print_table("run config keys (set in YAML or as section.key=value)", ["key", "default", "meaning"],
                [list(r) for r in describe_keys()])
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="affina", description="Fine-tune, evaluate and use language "
                                "models on your own data.")
    p.add_argument("--version", action="version", version=f"affina {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="fine-tune a model (see `affina config` for every key)")
    t.add_argument("-c", "--config", help="YAML run config")
    t.add_argument("overrides", nargs="*", metavar="section.key=value", help="override config keys")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    t.add_argument("--checkpoint", metavar="checkpoint-N", help="with --resume: continue from this "
                   "checkpoint instead of the newest (also: --resume RUN_DIR/checkpoints/checkpoint-N)")
    t.add_argument("--continue-from", metavar="NAME@ALIAS|RUN_DIR", help="continue an earlier model "
                   "(or RUN_DIR/checkpoints/checkpoint-N, one of its checkpoints) "
                   "on new data (data.train) with replay of its training data (replay.fraction), a "
                   "re-warmed learning rate, and forgetting measured on every earlier evaluation set")
    t.add_argument("--log-format", choices=("bar", "jsonl"), default="bar",
                   help="bar: one progress bar (loss, validation loss, tokens/s, ETA); jsonl: one "
                        "JSON object per training event on stdout, for scripts (default: bar)")
    t.add_argument("--print-launch", action="store_true", help="with distributed.strategy=ddp|fsdp: "
                   "print the torchrun command for each machine instead of training")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress output; only warnings and "
                   "the final summary")
    t.set_defaults(func=_cmd_train)

    d = sub.add_parser("data", help="inspect and check data files")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    di = dsub.add_parser("inspect", help="format, rows, token lengths, duplicates, fingerprint, a rendered example")
    di.add_argument("files", nargs="+")
    di.add_argument("--format", help="force a format instead of detecting it")
    di.add_argument("--model", default="default", help="model spec whose tokenizer and template to use")
    di.add_argument("--max-length", type=int, default=512)
    di.add_argument("--train-on-prompt", action="store_true")
    di.set_defaults(func=_cmd_data_inspect)

    for name, helptext, func in (("generate", "generate one reply from a model or run", _cmd_generate),
                                 ("chat", "chat interactively with a model or run", _cmd_chat)):
        g = sub.add_parser(name, help=helptext)
        g.add_argument("ref", metavar="MODEL_OR_RUN", help="run directory, NAME@VERSION|ALIAS, or a model spec (default, dir, .gguf)")
        if name == "generate":
            g.add_argument("--prompt", required=True)
        g.add_argument("--system", help="system message")
        g.add_argument("--max-new-tokens", type=int, default=256)
        g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (deterministic)")
        g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (with --temperature > 0)")
        g.add_argument("--seed", type=int, help="seed for sampling: the same seed gives the same reply, "
                       "here and from `affina serve`")
        g.set_defaults(func=func)

    m = sub.add_parser("methods", help="list adaptation methods")
    m.add_argument("--model", metavar="SPEC", help="also show trainable parameters, %% of total and "
                   "the memory of trainable state (weights+grads+AdamW) for this model")
    m.add_argument("--describe", metavar="METHOD", help="list one method's config keys")
    m.set_defaults(func=_cmd_methods)
    c = sub.add_parser("config", help="list every run config key with its default and meaning")
    c.set_defaults(func=_cmd_config)

    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return p


def _quiet_libraries() -> None:
    """Keep the terminal for affina's own progress bars and tables.

    Nothing heavy is imported here: environment variables and logger levels take effect when a
    command later imports transformers, so `--help`, `--version` and parse errors stay instant."""
    import logging
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Read by transformers when it is first imported: errors only, and no per-tensor load/save
    # bars (hub progress bars; the training bar is affina's own).
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # bitsandbytes warns on import that an optional hub-hosted CPU kernel is absent; it falls back
    # to its built-in kernels, and nothing can be fetched from a hub here anyway.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # Deprecation notices raised inside upstream libraries, about their own internals.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    if "transformers" in sys.modules:  # already imported (e.g. main() called in-process)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    args = build_parser().parse_args(argv)
    from .ui import set_output

    set_output("normal")  # each invocation starts in the default mode (`train -q` changes it)
    try:
        return args.func(args) or 0
    except AffinaError as e:
        print(f"affina: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("affina: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _reader_went_away()


def _reader_went_away() -> int:
    """The reader closed the pipe early (`affina logs --jsonl | head`): not an error for us.
    Exit 0, as `head` asked for no more; point stdout at /dev/null first so that Python's own
    flush at exit does not raise a second BrokenPipeError and print a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (captured in tests)
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
