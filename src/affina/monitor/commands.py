"""CLI: `affina monitor MODEL` (drift report, optionally the retraining loop) and
`affina feedback export`."""

from __future__ import annotations

import json
from pathlib import Path

from ..serve.commands import parse_when

__all__ = ["register", "LOG_URL_ENV"]

# The request log URL when --db is not given (how `affina serve` hands its log to the scheduled
# monitor without putting a database password on a command line).
LOG_URL_ENV = "AFFINA_MONITOR_LOG_URL"


def _cmd_monitor(args) -> int:
    from ..ui import info, warn
    from .drift import load_settings, resolve_target
    from .history import MonitorStore
    from .report import plot_history, print_report, write_html
    from .run import monitor_once

    overrides = list(args.set or [])
    if args.window:
        overrides.append(f"window={args.window}")
    for key, value in (("alert_webhook", args.alert_webhook), ("alert_command", args.alert_command)):
        if value:
            overrides.append(f"{key}={json.dumps(value)}")
    settings = load_settings(Path(args.config) if args.config else None, overrides)
    target = resolve_target(args.model, Path(args.store) if args.store else None)
    import os

    log_url = args.db or os.environ.get(LOG_URL_ENV)
    report, path = monitor_once(target, settings, log_url=log_url, monitor_dir=args.monitor_dir,
                                since=parse_when(args.since, "--since"), until=parse_when(args.until, "--until"),
                                save=not args.no_save)
    history = MonitorStore(args.monitor_dir).history(target.name) if path else []
    if args.json:
        print(json.dumps(report.to_dict(), indent=1, default=str))
    else:
        print_report(report)
    png = Path(args.png) if args.png else None
    if args.html and png is None:
        png = Path(args.html).with_suffix(".png")
    if png is not None:
        from .history import summary_of

        plot_history(history or [summary_of(report)], png, f"drift of {target.name} over time")
        info(f"plot written to {png}")
    if args.html:
        write_html(report, history or [], Path(args.html), png)
        info(f"report written to {args.html}")
    for alert in report.alerts:
        (info if alert["ok"] else warn)(f"alert {alert['hook']}: {alert['detail']}")
    if path:
        info(f"report saved to {path}")
    if args.loop:
        from .loop import load_policy, run_loop

        policy = load_policy(Path(args.policy) if args.policy else None, args.policy_set or [])
        outcome = run_loop(target, policy, log_url=log_url, monitor_dir=args.monitor_dir,
                           submit=_submitter(args))
        info(f"loop: {outcome['step']}: {outcome['reason']}")
        if args.json:
            print(json.dumps(outcome, indent=1, default=str))
    return 0


def _submitter(args):
    """How the loop trains: a job on the server at --jobs-url; a job in the server's own queue
    when `affina serve` runs this monitor; else `affina train` in a subprocess here."""
    import os

    from ..jobs.loop_submit import HttpQueue, JobsSubmitter, local_queue_from_env
    from .loop import local_train

    if args.jobs_url:
        key = args.api_key or os.environ.get("AFFINA_API_KEY") or os.environ.get("OPENAI_API_KEY")
        return JobsSubmitter(HttpQueue(args.jobs_url, key))
    queue = local_queue_from_env()
    return JobsSubmitter(queue) if queue is not None else local_train


def _cmd_feedback_export(args) -> int:
    from ..ui import info, print_table
    from .feedback_export import export_feedback

    result = export_feedback(Path(args.out), log_url=args.db, model=args.model,
                             since=parse_when(args.since, "--since"), until=parse_when(args.until, "--until"),
                             approve_at=args.approve_at, redact=args.redact)
    rows = [["training rows written", result.rows]]
    rows += [[f"skipped: {reason}", n] for reason, n in sorted(result.skipped.items())]
    if args.redact:
        rows += [[f"redacted: {kind}", n] for kind, n in result.redacted.items()]
    print_table("feedback export", ["", "count"], rows)
    if result.path:
        info(f"wrote {result.rows} rows to {result.path} (sha256 {result.sha256[:12]}…)")
    else:
        info("no corrected or approved replies to export; nothing written")
    return 0


def register(sub) -> None:
    m = sub.add_parser("monitor", help="drift of a served model's traffic against its training data "
                       "(report, plot, alerts), and optionally the retraining loop")
    m.add_argument("model", metavar="MODEL", help="the model name clients use: NAME@ALIAS|VERSION, a run "
                   "name in --store, or a run directory")
    m.add_argument("--store", default="runs", help="model store the server serves (default: runs)")
    m.add_argument("--db", help="request log database URL (default: $AFFINA_MONITOR_LOG_URL, else sqlite "
                   "in $AFFINA_HOME/serve)")
    m.add_argument("--window", type=int, help="newest N answered requests (default: the setting `window`, 200)")
    m.add_argument("--since", help="window from this time (ISO, UTC unless zoned) instead of the newest N")
    m.add_argument("--until", help="window before this time (ISO)")
    m.add_argument("-c", "--config", help="YAML of monitor settings (thresholds, alpha, alert hooks); "
                   "see docs/monitoring.md")
    m.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one setting (repeatable)")
    m.add_argument("--alert-webhook", metavar="URL", help="POST the summary here when the window drifts")
    m.add_argument("--alert-command", metavar="CMD", help="run CMD with the summary as JSON on stdin when "
                   "the window drifts")
    m.add_argument("--monitor-dir", type=Path, help="where reports and history are kept (default: "
                   "$AFFINA_HOME/monitor)")
    m.add_argument("--html", metavar="FILE", help="write the report as a page (with the plot beside it)")
    m.add_argument("--png", metavar="FILE", help="plot drift over time")
    m.add_argument("--json", action="store_true", help="print the full report as JSON")
    m.add_argument("--no-save", action="store_true", help="do not add this window to the history")
    m.add_argument("--loop", action="store_true", help="then apply the retraining policy: retrain, "
                   "register and promote through the gates when it is due")
    m.add_argument("--policy", metavar="FILE", help="YAML retraining policy (see docs/monitoring.md)")
    m.add_argument("--policy-set", action="append", metavar="KEY=VALUE", help="override one policy key")
    m.add_argument("--jobs-url", metavar="URL", help="with --loop: submit the retraining as a fine-tuning "
                   "job to this server's /v1 API (e.g. http://127.0.0.1:8000/v1) and wait for it; "
                   "default: the server's own queue when `affina serve` runs the monitor, else "
                   "`affina train` in a subprocess on this machine")
    m.add_argument("--api-key", help="API key for --jobs-url (default: $AFFINA_API_KEY or $OPENAI_API_KEY)")
    m.set_defaults(func=_cmd_monitor)

    f = sub.add_parser("feedback", help="feedback given through POST /v1/feedback")
    fsub = f.add_subparsers(dest="feedback_command", required=True, metavar="SUBCOMMAND")
    fe = fsub.add_parser("export", help="corrected and approved replies → chat training rows (JSONL) "
                         "with each row's request id in its lineage")
    fe.add_argument("--out", required=True, help="JSONL file to write")
    fe.add_argument("--db", help="request log database URL (default: sqlite in $AFFINA_HOME/serve)")
    fe.add_argument("--model", help="only feedback on this model name")
    fe.add_argument("--since", help="feedback from this time (ISO)")
    fe.add_argument("--until", help="feedback before this time (ISO)")
    fe.add_argument("--approve-at", type=float, default=1.0, help="a rating at least this high approves the "
                    "model's own reply as a training row (default: 1)")
    fe.add_argument("--redact", action="store_true", help="replace e-mail addresses, phone numbers, card "
                    "numbers, IBANs and IP addresses with placeholders")
    fe.set_defaults(func=_cmd_feedback_export)
