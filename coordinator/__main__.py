"""``python -m coordinator --host H --port N --db PATH [--topology FILE [--topology-mode M]]``

Serves the coordinator REST API with uvicorn.  Once listening it prints one JSON line
``{"port": N}`` on stdout (the real port, also for ``--port 0``).  SIGTERM/SIGINT shut it
down cleanly: pending long-polls are answered at once, in-flight requests finish, the
database is closed, exit status 0.  Logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from coordinator.api import create_app
from coordinator.errors import CoordinatorError
from coordinator.migrations import (
    CHUNK,
    COPY_PACE_PCT,
    MAX_CHUNK,
    MAX_COPY_PACE_PCT,
    MAX_PIECE_ORDERS,
    MIN_CHUNK,
    PIECE_ORDERS,
    Driver,
)
from coordinator.partition_link import ClientTransport, token_file_provider
from coordinator.serving import KEEP_ALIVE_S, bind_listener
from coordinator.store import DEFAULT_DB_PATH, CoordinatorStore

log = logging.getLogger("coordinator")


class _Server(uvicorn.Server):
    """uvicorn server whose signals are handled by :func:`serve` (no re-raise on exit)."""

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m coordinator", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="listen port, 0 = ephemeral")
    p.add_argument("--listen", metavar="HOST:PORT", help="alternative to --host/--port")
    p.add_argument("--db", default=DEFAULT_DB_PATH, help=f"SQLite file (default {DEFAULT_DB_PATH})")
    p.add_argument("--topology", type=Path, help="JSON topology file to apply at start")
    p.add_argument(
        "--topology-mode",
        choices=("bootstrap", "replace"),
        default="bootstrap",
        help="bootstrap (default): apply --topology only to an empty database (version 0), "
        "so changes made through the API survive restarts; replace: make the map equal to "
        "the file at every start (idempotent)",
    )
    p.add_argument("--control-token-file", type=Path, default=None,
                   help="access token (admin) for the migration steps sent to partitions whose tokens "
                   "are on; read again when it expires (default: $MATCHX_CONTROL_TOKEN_FILE, else none)")
    p.add_argument("--control-auth-url", default=None,
                   help="with --control-password-file: log in to this auth service as the service user "
                   "(admin and read) for the migration steps, again whenever the token expires; what "
                   "`matchctl up` passes when its topology runs the auth service")
    p.add_argument("--control-password-file", type=Path, default=None,
                   help="the service user's password (with --control-auth-url)")
    p.add_argument("--migration-step-timeout", type=float, default=30.0,
                   help="seconds a partition may stay unreachable before a migration that has not "
                   "reached its point of no return is rolled back (default 30)")
    p.add_argument("--migration-chunk-bytes", type=int, default=CHUNK,
                   help=f"raw bytes of a symbol's export copied per step (one log message at the source "
                   f"and one at the destination), {MIN_CHUNK}..{MAX_CHUNK} (default {CHUNK}): fewer, larger "
                   "chunks mean fewer log round trips in the migration's pause")
    p.add_argument("--migration-stage-delay-ms", type=int, default=0,
                   help="for fault tests only: wait this long between fetching a migrating symbol's "
                   "export and staging it at the destination, so that a test can act in that window "
                   "(the symbol stays frozen meanwhile); default 0")
    p.add_argument("--migration-step-hold-ms", type=int, default=0,
                   help="for fault tests only: wait this long before each step of a migration, so that "
                   "every state it records lasts at least that long and a test can act in it (a "
                   "frozen symbol stays frozen meanwhile); default 0")
    p.add_argument("--no-migration-precopy", dest="migration_precopy", action="store_false",
                   help="copy a migrating symbol's whole export after its freeze, instead of a pre-copy "
                   "while it still trades and then only what changed since (docs/migration.md)")
    p.add_argument("--migration-precopy-piece-orders", type=int, default=PIECE_ORDERS,
                   help=f"orders per piece of a migration's pre-copy, each piece one log message at the "
                   f"source (the source's other symbols wait behind one piece, not the whole book), "
                   f"0..{MAX_PIECE_ORDERS} (default {PIECE_ORDERS}); 0: the whole pre-copy as one message. "
                   f"The source's cleanup after the drop (the moved orders out of its indexes) goes in pieces "
                   f"of as many ({PIECE_ORDERS} when 0)")
    p.add_argument("--migration-precopy-piece-pause-ms", type=int, default=0,
                   help="wait this long between two pieces of a migration's pre-copy, 0..10000 (default 0: "
                   "the next piece is asked for while the last goes in), and between two pieces of the "
                   "source's cleanup after the drop; spreads the copy's CPU out on machines whose cores "
                   "the partitions share")
    p.add_argument("--migration-copy-pace-pct", type=int, default=COPY_PACE_PCT,
                   help=f"after each piece of a migration's pre-copy and of the source's cleanup, wait this "
                   f"percentage of the time the piece took, 0..{MAX_COPY_PACE_PCT} (default {COPY_PACE_PCT}: "
                   f"pieces back to back, the next asked for while the last goes in; 100: the copy takes about "
                   f"half of the cores it shares with the other symbols, and twice as long)")
    p.add_argument("--log-level", default="info", help="debug|info|warning|error")
    p.add_argument("--access-log", action="store_true", help="log every request (stderr)")
    p.add_argument(
        "--graceful-timeout",
        type=float,
        default=5.0,
        help="seconds to let in-flight requests finish on shutdown",
    )
    args = p.parse_args(argv)
    if not MIN_CHUNK <= args.migration_chunk_bytes <= MAX_CHUNK:
        p.error(f"--migration-chunk-bytes must be in [{MIN_CHUNK}, {MAX_CHUNK}], got {args.migration_chunk_bytes}")
    if not 0 <= args.migration_precopy_piece_pause_ms <= 10_000:
        p.error("--migration-precopy-piece-pause-ms must be in [0, 10000], "
                f"got {args.migration_precopy_piece_pause_ms}")
    if not 0 <= args.migration_copy_pace_pct <= MAX_COPY_PACE_PCT:
        p.error(f"--migration-copy-pace-pct must be in [0, {MAX_COPY_PACE_PCT}], got {args.migration_copy_pace_pct}")
    if not 0 <= args.migration_precopy_piece_orders <= MAX_PIECE_ORDERS:
        p.error(f"--migration-precopy-piece-orders must be in [0, {MAX_PIECE_ORDERS}], "
                f"got {args.migration_precopy_piece_orders}")
    if not 0 <= args.migration_stage_delay_ms <= 600_000:
        p.error(f"--migration-stage-delay-ms must be in [0, 600000], got {args.migration_stage_delay_ms}")
    if not 0 <= args.migration_step_hold_ms <= 600_000:
        p.error(f"--migration-step-hold-ms must be in [0, 600000], got {args.migration_step_hold_ms}")
    if (args.control_auth_url is None) != (args.control_password_file is None):
        p.error("--control-auth-url and --control-password-file go together")
    if args.control_auth_url and args.control_token_file:
        p.error("give --control-token-file or --control-auth-url with --control-password-file, not both")
    if args.listen:
        host, sep, port = args.listen.rpartition(":")
        if not sep or not port.isdigit():
            p.error(f"--listen expects HOST:PORT, got {args.listen!r}")
        args.host, args.port = host.strip("[]") or "0.0.0.0", int(port)
    return args


def migration_driver(args: argparse.Namespace, store: CoordinatorStore) -> tuple[Driver, ClientTransport]:
    """The migration driver, talking to partitions through the SDK (a JVM only once it does)."""
    kwargs: dict = {}
    token_file = args.control_token_file or (Path(os.environ["MATCHX_CONTROL_TOKEN_FILE"])
                                             if os.environ.get("MATCHX_CONTROL_TOKEN_FILE") else None)
    if args.control_auth_url is not None:  # before the environment's token file
        from coordinator.auth.setup import service_token_provider

        password = args.control_password_file.read_text().strip()
        if not password:
            raise RuntimeError(f"control password file {args.control_password_file} is empty")
        kwargs["token_provider"] = service_token_provider(args.control_auth_url, password)
    elif token_file is not None:
        if not token_file.is_file():
            raise RuntimeError(f"control token file {token_file} does not exist")
        kwargs["token_provider"] = token_file_provider(token_file)
    transport = ClientTransport(store, client_kwargs=kwargs)
    return Driver(store, transport, step_timeout=args.migration_step_timeout,
                  chunk_bytes=args.migration_chunk_bytes,
                  stage_delay_s=args.migration_stage_delay_ms / 1000,
                  step_hold_s=args.migration_step_hold_ms / 1000,
                  precopy=args.migration_precopy,
                  piece_orders=args.migration_precopy_piece_orders,
                  piece_pause_s=args.migration_precopy_piece_pause_ms / 1000,
                  copy_pace_pct=args.migration_copy_pace_pct), transport


async def serve(args: argparse.Namespace, store: CoordinatorStore) -> None:
    driver, transport = migration_driver(args, store)
    app = create_app(store, migration_driver=driver)
    sock = bind_listener(args.host, args.port)
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level=args.log_level.lower(),
        access_log=args.access_log,
        timeout_graceful_shutdown=args.graceful_timeout,
        timeout_keep_alive=KEEP_ALIVE_S,
        lifespan="on",
    )
    server = _Server(config)
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        log.info("signal %s: shutting down", signal.Signals(signum).name)
        app.state.watcher.close()  # answer pending long-polls now
        if server.should_exit:
            server.force_exit = True
        server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    async def announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.01)
        port = sock.getsockname()[1]
        sys.stdout.write(json.dumps({"port": port}) + "\n")
        sys.stdout.flush()
        log.info("coordinator listening on %s:%d (db %s)", args.host, port, store.path)

    announcer = asyncio.create_task(announce())
    try:
        await server.serve(sockets=[sock])
    finally:
        announcer.cancel()
        sock.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    transport.close()
    if not server.started:
        raise RuntimeError("server failed to start")


def apply_topology(store: CoordinatorStore, args: argparse.Namespace) -> bool:
    try:
        document = json.loads(args.topology.read_text())
    except (OSError, ValueError) as exc:
        log.error("cannot read topology %s: %s", args.topology, exc)
        return False
    if args.topology_mode == "bootstrap" and store.version != 0:
        log.info(
            "database %s already initialised (version %d): topology %s not applied "
            "(use --topology-mode replace to enforce it)",
            store.path,
            store.version,
            args.topology,
        )
        return True
    try:
        result = store.load_topology(document)
    except CoordinatorError as exc:
        log.error("invalid topology %s: %s: %s %s", args.topology, exc.code, exc, exc.details)
        return False
    log.info("topology %s applied: %s", args.topology, result)
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        store = CoordinatorStore(args.db)
    except Exception as exc:
        log.error("cannot open database %s: %s", args.db, exc)
        return 1
    try:
        if args.topology is not None and not apply_topology(store, args):
            return 1
        asyncio.run(serve(args, store))
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", args.host, args.port, exc)
        return 1
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    finally:
        store.close()
    return 0


def _exit(code: int) -> None:
    jpype = sys.modules.get("jpype")
    if jpype is not None and jpype.isJVMStarted():
        # the partition links (coordinator/partition_link.py) are closed by now; tearing the JVM
        # down at interpreter exit can hang, so leave without it
        logging.shutdown()
        sys.stdout.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    _exit(main())
