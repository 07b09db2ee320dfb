"""`affina export RUN --merged OUT [--gguf [--gguf-type f32|f16|q8_0]] [--no-parity-check]`."""

from __future__ import annotations

__all__ = ["register"]


def _cmd_export(args) -> int:
    from .export import export_merged
    from .ui import print_table

    result = export_merged(args.run, args.merged, gguf=args.gguf, gguf_type=args.gguf_type)
    print_table("export", ["", "value"], [[k, v] for k, v in result.items()])
    if args.no_parity_check:
        return 0
    from .parity import check_parity

    forms = [result["merged"]] + ([result["gguf"]] if "gguf" in result else [])
    parity = check_parity(args.run, forms)
    title = "parity with the run" + (f" ({parity.skipped}: templates only)" if parity.skipped else "")
    print_table(title, ["form", "template match", "stop tokens match", "answers equal"], parity.rows())
    parity.raise_for_mismatch()  # ParityError: one line, exit code 1
    return 0


def register(subparsers) -> None:
    from .gguf_export import GGUF_TYPES

    e = subparsers.add_parser("export", help="write a run as a plain HF model (adapter merged), optionally GGUF")
    e.add_argument("run", metavar="RUN", help="run directory")
    e.add_argument("--merged", required=True, metavar="OUT", help="output directory for the merged HF model")
    e.add_argument("--gguf", action="store_true", help="also write OUT/model.gguf (llama architecture)")
    e.add_argument("--gguf-type", choices=list(GGUF_TYPES), default="f32",
                   help="GGUF weight type: f32 (exact), f16 (half the size), q8_0 (about a quarter; "
                        "answers may differ slightly). Default f32")
    e.add_argument("--no-parity-check", action="store_true",
                   help="skip checking that the exported forms answer like the run")
    e.set_defaults(func=_cmd_export)
