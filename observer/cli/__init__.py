"""The `observer` command: `up` (everything), `webhook` (the webhook alone), `run FLOW` (one run now)."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from observer.cli.runner import EPHEMERAL_STARTUP_SECONDS
from observer.errors import CommandError, SettingsError
from observer.settings import load_settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except SettingsError as exc:
        print(f"observer: {exc}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"observer: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="observer",
        description="Observer: watches agent operations, learns from them, feeds lessons back.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = functools.partial(_command, commands)

    up = add(
        "up",
        _up,
        "start everything: Prefect server + UI, worker, deployments, webhook",
        "Start a local Prefect server (SQLite, or the PostgreSQL named by"
        " PREFECT_SERVER_DATABASE_CONNECTION_URL; UI on 127.0.0.1:4200), a process work pool"
        " and worker, the deployments of prefect.yaml and the webhook on OBSERVER_PORT."
        " Ctrl-C stops all of it; a second start reuses the same data.",
    )
    up.add_argument("--prefect-port", type=int, default=4200, help="Prefect server port")
    up.add_argument(
        "--no-server",
        action="store_true",
        help="join the Prefect server at PREFECT_API_URL instead of starting one (a second host)",
    )
    status = add(
        "status",
        _status,
        "how the product is doing: webhook, Prefect server, worker, runs, backlog, files",
        "Show the webhook, the Prefect server and its worker (up or not), each deployment's"
        " last and next run, the spool backlog, ops.jsonl, the corrections tailer's lag and"
        " the Prefect database size. Exit status 1 when the webhook, the server or the worker"
        " is down.",
    )
    status.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    add(
        "deploy",
        _deploy,
        "create the work pool and apply prefect.yaml to the Prefect server at PREFECT_API_URL",
        "Create the process work pool and apply prefect.yaml (schedules from OBSERVER_CYCLE)"
        " to the Prefect server named by PREFECT_API_URL. `observer up` does this itself.",
    )
    add(
        "webhook",
        _webhook,
        "serve the webhook alone (no Prefect needed)",
        "Serve POST /event, POST /events, GET /health and GET /stats on"
        " OBSERVER_HOST:OBSERVER_PORT.",
    )
    run = add(
        "run",
        _run,
        "run one deployment now on the Prefect server and follow it until it ends",
        "Create a run of FLOW's deployment on the Prefect server (PREFECT_API_URL, or the"
        " checkout's prefect.toml), like the UI's Run button, and follow it until it ends."
        " Parameters as -p key=value (JSON values); an unknown name or a bad value is"
        " refused before anything starts. With no server answering it stops with an error"
        " unless --ephemeral asks to run here on a temporary server.",
    )
    run.add_argument("flow", help="flow to run (see `observer run --list`)", nargs="?")
    run.add_argument(
        "-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="a parameter"
    )
    run.add_argument("--list", action="store_true", help="list the flows that can be run")
    run.add_argument(
        "--ephemeral",
        action="store_true",
        help="run the flow in this process on a temporary Prefect server (not in the history)",
    )
    run.add_argument(
        "--startup-seconds",
        type=_positive_int,
        default=EPHEMERAL_STARTUP_SECONDS,
        metavar="N",
        help="with --ephemeral: how long to wait for the temporary server to answer"
        " (default %(default)s s; Prefect's own 20 s are too short on a busy machine)",
    )
    outcomes = add(
        "outcomes",
        _outcomes,
        "every correction, diagnosis and playbook entry with its verdict, and the alerts",
        "Show every intervention assess-outcomes keeps (open ones, and those finished in the last"
        " OBSERVER_OUTCOMES_RETENTION_DAYS) with its verdict, its failures before and after and"
        " its advice, then the repeated-advice alerts, as the last assess-outcomes run left them.",
    )
    outcomes.add_argument(
        "--json",
        action="store_true",
        help='one JSON object {"interventions": [...], "alerts": [...]}, for scripts',
    )
    history = add(
        "history",
        _history,
        "the ops history table at a glance; `history export` writes every op line back out",
        "Show the history table (where it is, days, ops, bytes, version, oldest and newest"
        " day) and what waits for it (ops.jsonl, sealed segments). `observer history export`"
        " writes every op line of this host, byte for byte and in arrival order, from the"
        " table, the sealed segments and ops.jsonl: the ops.jsonl that OBSERVER_HISTORY=off"
        " would have written (less the days retention dropped).",
    )
    history.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    export = _command(
        history.add_subparsers(dest="history_command", metavar="ACTION"),
        "export",
        _export,
        "write every op line in arrival order (to standard output, or -o FILE)",
        "Write this host's op lines, byte for byte, in arrival order.",
    )
    export.add_argument("--day", type=date.fromisoformat, help="only this UTC day (YYYY-MM-DD)")
    export.add_argument("-o", "--output", type=Path, help="write to this file, not stdout")
    return parser


def _command(
    commands: Any,
    name: str,
    handler: Callable[[argparse.Namespace], int],
    summary: str,
    description: str,
) -> argparse.ArgumentParser:
    """One subcommand: its one-line help, its description and the function that runs it."""
    command: argparse.ArgumentParser = commands.add_parser(
        name, help=summary, description=description
    )
    command.set_defaults(handler=handler)
    return command


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of seconds ≥ 1, got {text!r}")
    return value


def _webhook(_: argparse.Namespace) -> int:
    from observer.webhook.serve import run_webhook

    run_webhook(load_settings())
    return 0


def _status(args: argparse.Namespace) -> int:
    from observer.cli.status import show_status

    return show_status(load_settings(), as_json=args.json)


def _deploy(_: argparse.Namespace) -> int:
    from deployments.apply import deploy, prefect_environment
    from observer.catalog import FLOWS

    settings = load_settings()
    if not settings.prefect_api_url:
        print("observer: set PREFECT_API_URL to the Prefect server's API", file=sys.stderr)
        return 2
    deploy(prefect_environment(settings, settings.prefect_api_url))
    print(f"observer: applied prefect.yaml to {settings.prefect_api_url}: {', '.join(FLOWS)}")
    return 0


def _up(args: argparse.Namespace) -> int:
    from observer.cli.supervisor import run_everything

    return run_everything(
        load_settings(), prefect_port=args.prefect_port, server=not args.no_server
    )


def _outcomes(args: argparse.Namespace) -> int:
    from observer.cli.outcomes import show_outcomes

    return show_outcomes(load_settings(), as_json=args.json)


def _history(args: argparse.Namespace) -> int:
    from observer.cli.history import show_history

    return show_history(load_settings(), as_json=args.json)


def _export(args: argparse.Namespace) -> int:
    from observer.cli.history import export_history

    return export_history(load_settings(), args.day, args.output)


def _run(args: argparse.Namespace) -> int:
    from observer.cli.runner import run_flow_command

    return run_flow_command(
        load_settings(),
        args.flow,
        args.param,
        list_only=args.list,
        ephemeral=args.ephemeral,
        startup_seconds=args.startup_seconds,
    )
