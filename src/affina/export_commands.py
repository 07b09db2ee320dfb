"""`affina export RUN --merged OUT [--gguf]`."""

from __future__ import annotations

__all__ = ["register"]


def _cmd_export(args) -> int:
    from .export import export_merged
    from .ui import print_table

    result = export_merged(args.run, args.merged, gguf=args.gguf)
    print_table("export", ["", "value"], [[k, v] for k, v in result.items()])
    return 0


def register(subparsers) -> None:
    e = subparsers.add_parser("export", help="write a run as a plain HF model (adapter merged), optionally GGUF")
    e.add_argument("run", metavar="RUN", help="run directory")
    e.add_argument("--merged", required=True, metavar="OUT", help="output directory for the merged HF model")
    e.add_argument("--gguf", action="store_true", help="also write OUT/model.gguf (llama architecture)")
    e.set_defaults(func=_cmd_export)
