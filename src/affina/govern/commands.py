"""`affina registry`, `affina lineage` and `affina promote`."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["register"]


def _ts(ms) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def _cmd_register(args) -> int:
    from ..ui import info
    from .registry import register_run

    v = register_run(Path(args.run), args.name, eval_data=args.eval_data, metric=args.metric)
    info(f"registered {args.run} as {v.ref} ({len(json.loads(v.tags['affina.hashes']))} files hashed)")
    return 0


def _cmd_list(args) -> int:
    from ..ui import print_table
    from .registry import list_models

    rows = [[m["name"], m["versions"], m["latest"], ", ".join(f"{a}→{v}" for a, v in sorted(m["aliases"].items()))]
            for m in list_models()]
    print_table("registered models", ["name", "versions", "latest", "aliases"], rows)
    return 0


def _cmd_show(args) -> int:
    from ..ui import print_table
    from .registry import show_model

    m = show_model(args.name)
    if args.json:
        print(json.dumps(m, indent=1))
        return 0
    rows = [[f"{m['name']}@{v['version']}", _ts(v["created"]), ", ".join(v["aliases"]),
             "; ".join(f"{a}: {d['decision']}" for a, d in v["promotions"].items()), v["run_dir"]]
            for v in m["versions"]]
    print_table(f"{m['name']}", ["version", "created (UTC)", "aliases", "promotions", "run"], rows)
    if m["history"]:
        print_table(f"alias history of {m['name']} (oldest first)",
                    ["time (UTC)", "who", "alias", "from", "to", "event"],
                    [[e.get("time", "-"), e.get("who", "-"), e.get("alias", "-"),
                      "-" if e.get("from") is None else f"v{e['from']}",
                      "-" if e.get("to") is None else f"v{e['to']}", _event(e)] for e in m["history"]])
    tags = m["tags"]
    if tags:
        files = [e["path"] if isinstance(e, dict) else e for e in json.loads(tags.get("affina.eval_data", "[]"))]
        print("evaluation set: " + ", ".join(files) +
              f"; primary metric: {tags.get('affina.primary_metric', '-')}")
    return 0


def _event(e: dict) -> str:
    if e.get("kind") == "promotion":
        return (f"promotion of v{e.get('candidate')}: {e.get('decision')} ({e.get('metric')}, "
                f"margin {e.get('margin')})")
    return "set by hand (affina registry alias)"


def _cmd_alias(args) -> int:
    from ..ui import info
    from .registry import set_alias

    v = set_alias(args.ref, args.alias)
    info(f"{v.name}@{args.alias} → version {v.version}")
    return 0


def _cmd_lineage(args) -> int:
    from ..errors import AffinaError
    from ..ui import info, print_table
    from .lineage import draw_lineage, format_lineage, lineage, runs_for_dataset

    if args.dataset:
        found = runs_for_dataset(args.dataset, runs_dirs=[Path(d) for d in args.runs])
        if args.json:
            print(json.dumps(found, indent=1))
        else:
            print_table(f"runs trained on {args.dataset}", ["run", "data role", "mlflow run", "versions"],
                        [[f["run_dir"], ", ".join(f["roles"]), f["mlflow_run_id"] or "-",
                          ", ".join(f["versions"]) or "-"] for f in found])
        return 0
    if not args.ref:
        raise AffinaError("give NAME@VERSION, NAME@ALIAS or a run directory, or --dataset FINGERPRINT")
    data = lineage(args.ref, log_url=args.db)
    print(json.dumps(data, indent=1, default=str) if args.json else format_lineage(data))
    if args.graph:
        draw_lineage(data, Path(args.graph))
        info(f"graph written to {args.graph}")
    return 0


def _cmd_promote(args) -> int:
    from ..ui import info, print_table
    from .promote import promote

    bias = None
    if args.bias_suite is not None or args.bias_probes:
        from ..bias import PUBLIC_SUITES, BiasSettings

        suites = args.bias_suite if args.bias_suite is not None else (() if args.bias_probes else PUBLIC_SUITES)
        bias = BiasSettings(suites=suites, probes=args.bias_probes, limit=args.bias_limit)
    d = promote(args.ref, args.to, data=args.data, margin=args.margin, metric=args.metric,
                force=args.force, gates=args.gate, bias=bias, bias_margin=args.bias_margin,
                forgetting_margin=args.forgetting_margin)
    who = [k for k in ("candidate", "incumbent", "base") if k in d["results"]]
    measures = sorted({m for k in who for m in d["results"][k]})
    print_table(f"promotion of {d['candidate']} to {args.ref.split('@')[0]}@{args.to}", ["measure"] + who,
                [[m] + [f"{d['results'][k].get(m, float('nan')):.4f}" for k in who] for m in measures])
    if d["forgetting"]:
        print_table("earlier evaluation sets (forgetting gate)",
                    ["set", "metric", "candidate", "reference", "worse by", "regressed"],
                    [[Path(r["path"]).name, r["metric"], f"{r['candidate']:.4f}", f"{r['reference']:.4f}",
                      f"{r['worse_by']:.4f}", "YES" if r["regressed"] else "no"] for r in d["forgetting"]])
    for g in d["gates"]:
        print(f"gate {g['gate']}: {'pass' if g['passed'] else 'FAIL'} — {g['detail']}")
    info(f"{d['decision']}: report {d['report']}")
    return 0 if d["decision"] in ("promoted", "forced") else 1


def register(sub) -> None:
    reg = sub.add_parser("registry", help="register runs as NAME@version, list, show, alias")
    rsub = reg.add_subparsers(dest="registry_command", required=True, metavar="SUBCOMMAND")
    r = rsub.add_parser("register", help="register a run directory as the next version of NAME")
    r.add_argument("run")
    r.add_argument("--name", required=True)
    r.add_argument("--eval-data", nargs="+", help="evaluation set used by promotion (default: the run's eval.data)")
    r.add_argument("--metric", help="primary metric for promotion (default: the run's first eval metric)")
    r.set_defaults(func=_cmd_register)
    ls = rsub.add_parser("list", help="registered models with versions and aliases")
    ls.set_defaults(func=_cmd_list)
    sh = rsub.add_parser("show", help="versions, aliases and promotion decisions of NAME")
    sh.add_argument("name")
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(func=_cmd_show)
    al = rsub.add_parser("alias", help="point ALIAS at NAME@VERSION (also how to roll back)")
    al.add_argument("ref", metavar="NAME@VERSION")
    al.add_argument("alias")
    al.set_defaults(func=_cmd_alias)

    li = sub.add_parser("lineage", help="data → run → artifact → versions → requests, or runs for a dataset")
    li.add_argument("ref", nargs="?", metavar="NAME@VERSION|RUN_DIR")
    li.add_argument("--json", action="store_true")
    li.add_argument("--graph", metavar="OUT.png", help="draw the chain as a picture")
    li.add_argument("--dataset", metavar="FINGERPRINT", help="list every run and version trained on it")
    li.add_argument("--runs", nargs="*", default=["runs"], help="run directories to scan besides MLflow")
    li.add_argument("--db", help="request log that counts the version's served requests, the server's "
                    "--log-db (default: sqlite in $AFFINA_HOME/serve)")
    li.set_defaults(func=_cmd_lineage)

    pr = sub.add_parser("promote", help="evaluate and move an alias only if the candidate is not worse")
    pr.add_argument("ref", metavar="NAME@VERSION")
    pr.add_argument("--to", default="champion", metavar="ALIAS")
    pr.add_argument("--data", nargs="+", help="evaluation files (default: the set registered with NAME)")
    pr.add_argument("--margin", type=float, default=0.0, help="how much worse than the incumbent is tolerated")
    pr.add_argument("--metric", help="primary metric (default: the one registered with NAME)")
    pr.add_argument("--forgetting-margin", type=float, help="how much worse than the incumbent (or the "
                    "model it continued from) a continued candidate may be on each earlier evaluation "
                    "set (default: --margin)")
    pr.add_argument("--gate", action="append", help="gates to apply (default: all registered)")
    pr.add_argument("--force", action="store_true", help="move the alias even if a gate fails (recorded)")
    from ..bias.commands import suite_list

    pr.add_argument("--bias-suite", type=suite_list, metavar="S1,S2",
                    help="bias suites the bias gate scores on the candidate and the incumbent (or base): "
                         "crows_pairs,bbq,stereoset, or none (default: those of the run's last "
                         "`affina bias`; the gate passes unmeasured where there are none)")
    pr.add_argument("--bias-probes", metavar="FILE.jsonl", help="your own bias probes for the bias gate")
    pr.add_argument("--bias-limit", type=int, metavar="N", help="items per bias suite, stratified by category")
    pr.add_argument("--bias-margin", type=float, default=0.0, metavar="POINTS",
                    help="rise of a bias figure (points) the bias gate tolerates")
    pr.set_defaults(func=_cmd_promote)
