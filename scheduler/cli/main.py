"""`mesh-node`: the daemon and its command-line tools.

`run` starts the daemon in the foreground; the other commands ask a running node through its local control
socket (same user only) or, for jobs, through the client API of the data plane.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import get_args, get_origin

import trio
from rich.table import Table

from mesh import __version__, control
from mesh.admission import generate_mesh_key
from mesh.identity import load_or_create
from scheduler.cli import compute_cli, jobs_cli, progress, render_cli, tables, watch, zk_cli
from scheduler.cli.common import (
    EXIT_CANCELLED,
    EXIT_FAIL,
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_USAGE,
    UsageError,
    console,
    exit_status,
)
from scheduler.cli.common import run_client as _run_client
from scheduler.cli.common import show as _print
from scheduler.node import lifeline
from scheduler.node.config import (
    NodeSettings,
    add_data_dir_option,
    add_node_options,
    load_settings,
)
from scheduler.node.daemon import Node
from scheduler.node.endpoints import BindError, find_exception
from scheduler.node.tokens import TokenStore, parse_duration


# ---- logging ---------------------------------------------------------------------------------------------
class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        d = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
             "msg": record.getMessage()}
        if record.exc_info:
            d["exc"] = self.formatException(record.exc_info)
        return json.dumps(d)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)  # libraries stay quiet unless asked
    logging.getLogger("gpumesh").setLevel(level.upper())
    if level == "debug":
        root.setLevel(logging.DEBUG)


# ---- argument parsing ------------------------------------------------------------------------------------
def _add_settings_options(p: argparse.ArgumentParser) -> None:
    """One flag per NodeSettings field: --help documents every option, with its env var and default."""
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="TOML config file (keys as the long options, e.g. advert_interval = 2.0). "
                        "Precedence: flags > GPUMESH_* environment > config file > defaults")
    for name, f in NodeSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = "GPUMESH_" + name.upper()
        default = f.default_factory() if f.default_factory else f.default  # type: ignore[call-arg]
        helptext = f"{f.description} [env {env}; default: {default if default not in (None, '', []) else 'none'}]"
        ann = f.annotation
        if ann is bool:
            p.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=helptext)
        elif get_origin(ann) is list:
            p.add_argument(flag, action="append", default=argparse.SUPPRESS, metavar="VALUE", help=helptext)
        else:
            choices = get_args(ann) if str(get_origin(ann)) == "typing.Literal" else None
            p.add_argument(flag, default=argparse.SUPPRESS, choices=choices, metavar=None if choices else "VALUE",
                           help=helptext)


def settings_from_args(args: argparse.Namespace) -> NodeSettings:
    flags = {k: v for k, v in vars(args).items() if k in NodeSettings.model_fields}
    return load_settings(flags, args.config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mesh-node",
        description="gpumesh node: share this host's OpenCL devices with a peer-to-peer mesh and run jobs on it.",
        epilog="Run `mesh-node COMMAND --help` for the options of each command.")

    parser.add_argument("--version", action="version", version=f"mesh-node (gpumesh) {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run the node daemon in the foreground",
                         description="Run the node daemon in the foreground. SIGINT/SIGTERM stop it cleanly.")
    _add_settings_options(run)

    def client_cmd(name: str, help_: str, json_flag: bool = True, with_node: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        if with_node:
            add_node_options(p)
        else:
            add_data_dir_option(p)
        if json_flag:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    client_cmd("id", "print this node's peer id (creates the identity on first use)")
    client_cmd("status", "ask the running node for its status; exit 0 when it answers (a health check)")
    client_cmd("peers", "list the peers the running node sees, with their capacity and standing")
    client_cmd("devices", "list the compute devices the running node offers")
    client_cmd("runners", "list the runner processes that run device code, and what confines them")
    lab = client_cmd("label", "set or remove labels (KEY=VALUE, or KEY= to remove) carried in this node's advert")
    lab.add_argument("labels", nargs="*", metavar="KEY=VALUE")
    def job_cmd(name: str, help_: str) -> argparse.ArgumentParser:
        return client_cmd(name, help_, with_node=True)

    sp = job_cmd("submit", "submit a job to the mesh (exit status follows the job's outcome with --wait)")
    sp.add_argument("kind", help="job kind, e.g. echo, sleep, checksum, zk.prove, render.frame, compute.opencl")
    sp.add_argument("--spec", metavar="FILE", help="job spec as JSON ('-' for stdin; default {})")
    sp.add_argument("--input", metavar="FILE", type=Path, help="input bytes (streamed when large)")
    sp.add_argument("--id", default="", help="job id (idempotent: resubmitting the same id returns that job)")
    sp.add_argument("--priority", choices=("realtime", "interactive", "batch"), default="batch")
    sp.add_argument("--deadline-ms", type=float, help="deadline for realtime jobs, from now")
    sp.add_argument("--timeout", type=float, default=3600.0, help="seconds before the job fails (default 3600)")
    sp.add_argument("--max-attempts", type=int, default=3, help="placements before the job fails (default 3)")
    sp.add_argument("--reject-when-saturated", action="store_true",
                    help="refuse at once when the mesh is saturated instead of queueing")
    sp.add_argument("--wait", action="store_true", help="wait for the result")
    sp.add_argument("--out", type=Path, metavar="DIR", help="with --wait: write result.json and output.bin here")
    jobs_cli.add_parsers(job_cmd)
    cp = job_cmd("cancel", "cancel a job of the mesh, by id or unique prefix (reaches a running kernel at its next "
                           "chunk boundary)")
    cp.add_argument("id")
    wp = job_cmd("watch", "follow the mesh's jobs live: a progress bar per unfinished job on a terminal (advanced "
                          "by the workers' progress reports), a line per state change otherwise, every event as a "
                          "JSON line with --json (Ctrl-C stops)")
    wp.add_argument("--local", action="store_true", help="only the jobs the asked node coordinates")

    zk_cli.add_parsers(sub, add_node_options)
    render_cli.add_parser(sub)
    compute_cli.add_parser(sub)

    tok = sub.add_parser("token", help="create, list or revoke API tokens for clients",
                         description="API tokens let clients submit jobs. Stored hashed in the node's data dir; "
                                     "a running node picks up changes at once.")
    tsub = tok.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    for name, help_ in (("create", "create a token and print it once"), ("list", "list tokens"),
                        ("revoke", "revoke a token by name or id")):
        tp = tsub.add_parser(name, help=help_, description=help_)
        add_data_dir_option(tp, "the node")
        tp.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "create":
            tp.add_argument("--name", required=True, help="who or what the token is for (unique among live tokens)")
            tp.add_argument("--scope", action="append", choices=("read", "submit", "compute", "admin"),
                            help="what it may do (repeatable; default submit). compute = raw OpenCL kernels")
            tp.add_argument("--expires", metavar="DURATION", help="lifetime, e.g. 12h or 30d (default: no expiry)")
        if name == "revoke":
            tp.add_argument("token", metavar="NAME_OR_ID")
    sub.add_parser("mesh-key", help="print a new private-network key (swarm.key format) for --mesh-key-file",
                   description="Print a new 32-byte mesh key. Give the same file (mode 0600) to every node with "
                               "--mesh-key-file; nodes without it cannot connect.")
    return parser


# ---- commands --------------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    setup_logging(settings.log_level, settings.log_format)
    log = logging.getLogger("gpumesh.node")
    parent = os.getppid()
    if settings.exit_with_parent:
        lifeline.set_parent_death_signal(signal.SIGTERM)
        if not lifeline.parent_alive(parent):  # it died before the kernel was told
            return EXIT_OK
    node = Node(settings)  # identity errors surface here, before any network I/O

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                if settings.exit_with_parent:
                    nursery.start_soon(lifeline.watch_parent, parent, nursery.cancel_scope.cancel)
                await nursery.start(node.run)

                async def stop_on_signal() -> None:
                    async for sig in signals:
                        log.info("received %s, shutting down", signal.Signals(sig).name)
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(stop_on_signal)

    code = EXIT_OK
    try:
        trio.run(main)
        log.info("node stopped")
    except BaseException as e:
        bind_error = find_exception(e, BindError)
        if bind_error is None:
            if not isinstance(e, KeyboardInterrupt):  # a node that dies of an error is a bug: keep its traceback
                log.critical("node failed", exc_info=e)
            raise
        code = exit_status(bind_error) or EXIT_USAGE
    # Everything the node owns is closed (connections, journal, sockets); skip finalizing third-party objects
    # (OpenCL contexts, libp2p) at interpreter teardown so the process ends promptly (measured: ~80 ms
    # from SIGTERM to exit).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_peers(args: argparse.Namespace) -> int:
    peers = control.call(args.data_dir, "peers")

    def render(rows: list[dict]) -> None:
        t = Table(title=f"{len(rows)} node(s) in view")
        t.add_column("peer", overflow="fold", min_width=52)
        for col in ("data plane", "devices", "free slots", "queue", "standing", "advert age", "software"):
            t.add_column(col)
        for r in rows:
            kinds: dict[str, int] = {}
            for d in r["devices"]:
                kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
            t.add_row(r["peer_id"] + (" (self)" if r["self"] else ""), r["data_addr"],
                      ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none",
                      str(r["free_slots"]), str(r["queue_depth"]), f"{r['standing']:.2f}",
                      f"{r['age_s']:.1f} s", r["software"])
        console().print(t)

    _print(peers, args.json, render)
    return EXIT_OK


def device_table(rows: list[tuple[str, dict]], title: str):
    t = Table(title=title)
    for col in ("node", "device", "kind", "name", "CUs", "memory", "fp64", "mul-mod", "f32"):
        t.add_column(col)
    for owner, d in rows:
        f32 = d.get("f32_gflops") or 0.0
        t.add_row(owner, d["id"], d["kind"], d["name"], str(d["compute_units"]), _human_bytes(d["global_mem_bytes"]),
                  "yes" if d["fp64"] else "no", f"{d.get('mulmod_mops') or 0:.0f} M/s", f"{f32:.1f} GFLOP/s")
    return t


def cmd_devices(args: argparse.Namespace) -> int:
    res = control.call(args.data_dir, "devices")

    def render(r: dict) -> None:
        console().print(device_table([("local", d) for d in r["devices"]], "devices offered by this node"))
        if r["problem"]:
            print(f"note: {r['problem']}")

    _print(res, args.json, render)
    return EXIT_OK


def cmd_runners(args: argparse.Namespace) -> int:
    rows = control.call(args.data_dir, "runners", timeout=5.0)

    def render(rs: list[dict]) -> None:
        for r in rs:
            state = "busy" if r["leased"] else "idle" if r["ready"] else "starting"
            sb = ", ".join(f"{k}={v}" for k, v in r["sandbox"].items())
            print(f"{r['name']}  pid {r['pid']}  {state}  {sb}")
        if not rs:
            print("no runners (no OpenCL device offered)")

    _print(rows, args.json, render)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    st = control.call(args.data_dir, "status", timeout=5.0)
    _print(st, args.json, lambda s: console().print(tables.status_table(s)))
    return EXIT_OK


def cmd_id(args: argparse.Namespace) -> int:
    ident, _ = load_or_create(args.data_dir)
    _print({"peer_id": ident.peer_id_str}, args.json, lambda d: print(d["peer_id"]))
    return EXIT_OK


def cmd_label(args: argparse.Namespace) -> int:
    set_: dict[str, str] = {}
    unset: list[str] = []
    for item in args.labels:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise UsageError(f"label {item!r} must be KEY=VALUE (KEY= removes it)")
        (set_.__setitem__(k, v) if v else unset.append(k))
    labels = control.call(args.data_dir, "label", {"set": set_, "unset": unset})
    _print(labels, args.json, lambda d: print("\n".join(f"{k}={v}" for k, v in sorted(d.items())) or "(no labels)"))
    return EXIT_OK


def cmd_token(args: argparse.Namespace) -> int:
    store = TokenStore(args.data_dir)
    try:
        if args.token_command == "create":
            expires = parse_duration(args.expires) if args.expires else None
            token, rec = store.create(args.name, args.scope or ["submit"], expires)
            _print({"token": token, "id": rec.id, "name": rec.name, "scopes": rec.scopes, "expires": rec.expires},
                   args.json, lambda d: print(f"{d['token']}\n(token {d['name']!r}, scopes {','.join(d['scopes'])};"
                                              " shown once: store it now)", file=sys.stdout))
        elif args.token_command == "list":
            rows = [{"id": r.id, "name": r.name, "scopes": r.scopes, "created": r.created, "expires": r.expires,
                     "revoked": r.revoked} for r in store.records()]
            _print(rows, args.json, lambda rs: console().print(tables.token_table(rs)))
        else:
            rec = store.revoke(args.token)
            _print({"revoked": rec.id, "name": rec.name}, args.json, lambda d: print(f"revoked {d['name']} ({d['revoked']})"))
    except ValueError as e:
        raise UsageError(str(e)) from e
    return EXIT_OK


def cmd_mesh_key(args: argparse.Namespace) -> int:
    sys.stdout.write(generate_mesh_key())
    return EXIT_OK


def cmd_submit(args: argparse.Namespace) -> int:
    spec: dict = {}
    if args.spec:
        text = sys.stdin.read() if args.spec == "-" else Path(args.spec).read_text()
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as e:
            raise UsageError(f"--spec is not valid JSON: {e}") from e
    if args.input is not None and not args.input.is_file():
        raise UsageError(f"--input {args.input}: no such file")

    con = console()

    async def go(c):
        with progress.JobProgress(progress.mode_for(args, con) if args.wait else "off", con, args.kind) as prog:
            return await progress.submit_and_follow(
                c, prog, args.kind, spec, wait=args.wait, input=args.input, job_id=args.id, priority=args.priority,
                deadline_ms=args.deadline_ms, timeout_s=args.timeout, max_attempts=args.max_attempts,
                when_saturated="reject" if args.reject_when_saturated else "queue")

    ans, res = _run_client(args, go)
    if not ans["accepted"]:
        _print(ans, args.json, lambda a: print(f"job {a['id']} {a['message']}", file=sys.stderr))
        return EXIT_REJECTED
    if res is None:
        _print(ans, args.json, lambda a: print(f"job {a['id']} {a['message']}"))
        return EXIT_OK
    jobs_cli.write_outcome(res, args.out, args.json)
    return {"done": EXIT_OK, "cancelled": EXIT_CANCELLED}.get(res.state, EXIT_FAIL)


def cmd_jobs(args: argparse.Namespace) -> int:
    body = jobs_cli.list_body(args)
    rows = _run_client(args, lambda c: c.list(body.pop("limit"), **body))
    _print(rows, args.json, lambda rs: console().print(jobs_cli.job_table(
        rs, f"{len(rs)} job(s)" + (" on this node" if args.local else " in the mesh"))))
    return EXIT_OK


def cmd_job(args: argparse.Namespace) -> int:
    row = _run_client(args, lambda c: c.status(args.id))
    _print(row, args.json, lambda r: print(jobs_cli.show_job(r)))
    return EXIT_OK


def cmd_result(args: argparse.Namespace) -> int:
    con = console()

    async def go(c):
        with progress.JobProgress(progress.mode_for(args, con), con, "job") as prog:
            return await progress.result_and_follow(c, prog, args.id, wait=not args.no_wait)

    res = _run_client(args, go)
    jobs_cli.write_outcome(res, args.out, args.json)
    return {"done": EXIT_OK, "cancelled": EXIT_CANCELLED}.get(res.state, EXIT_FAIL)


def cmd_cancel(args: argparse.Namespace) -> int:
    row = _run_client(args, lambda c: c.cancel(args.id))
    _print(row, args.json, lambda r: print(f"job {r['id']}: {r['state']} {r.get('reason', '')}"))
    return EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    con = console()
    live = not args.json and con.is_terminal

    async def go(c):
        async with c.watch(local=args.local) as events:
            if not live:
                async for e in events:
                    if args.json:
                        print(json.dumps(e), flush=True)
                    elif "progress" not in e:  # plain lines: state changes only
                        con.print(watch.line(e))
                return EXIT_OK
            with watch.make_progress(con) as progress:
                view = watch.WatchView(progress)
                view.seed(await c.list(local=args.local))
                async with trio.open_nursery() as n:
                    n.start_soon(_refresh_every, progress, 0.25)
                    async for e in events:
                        view.event(e)
                        progress.refresh()
                    n.cancel_scope.cancel()
        return EXIT_OK

    try:
        return _run_client(args, go)
    except KeyboardInterrupt:
        return EXIT_OK


async def _refresh_every(progress, seconds: float) -> None:
    while True:
        await trio.sleep(seconds)
        progress.refresh()


COMMANDS = {"render": render_cli.run, "compute": compute_cli.run, "prove": zk_cli.cmd_prove, "verify": zk_cli.cmd_verify, "submit": cmd_submit, "jobs": cmd_jobs, "job": cmd_job, "result": cmd_result, "cancel": cmd_cancel, "watch": cmd_watch, "mesh-key": cmd_mesh_key, "token": cmd_token, "label": cmd_label, "run": cmd_run, "id": cmd_id, "status": cmd_status, "peers": cmd_peers, "devices": cmd_devices, "runners": cmd_runners}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    try:
        return COMMANDS[args.command](args)
    except BaseException as e:  # the one mapping of errors to exit statuses (common.ERROR_EXITS)
        code = exit_status(e)
        if code is None:
            raise
        return code


if __name__ == "__main__":
    t0 = time.time()
    sys.exit(main())
