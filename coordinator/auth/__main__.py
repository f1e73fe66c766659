"""Run the auth service: ``python -m coordinator.auth --host 127.0.0.1 --port 0 --db PATH``.

On startup one JSON line is printed on stdout::

    {"event": "listening", "host": "127.0.0.1", "port": 54321, "pid": 1234, "url": "..."}

(``--port 0`` picks a free port). SIGTERM/SIGINT shut down gracefully and the process exits 0
after printing ``{"event": "stopped"}``. Logs go to stderr only.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import sys
import threading
import time

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from ..serving import KEEP_ALIVE_S, bind_listener
from .app import create_app
from .config import AuthConfig


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m coordinator.auth", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081, help="0 = ephemeral (default 8081; the coordinator's is 8080)")
    p.add_argument("--db", default=None, help="SQLite path (env MATCHX_AUTH_DB_PATH, default ./var/auth.db)")
    p.add_argument(
        "--admin-key-file",
        default=None,
        help="file whose first line is the admin API key "
        "(or env MATCHX_AUTH_ADMIN_KEY / MATCHX_AUTH_ADMIN_API_KEY_FILE)",
    )
    p.add_argument("--access-ttl", type=int, default=None, help="seconds (default 900)")
    p.add_argument("--refresh-ttl", type=int, default=None, help="seconds (default 604800)")
    p.add_argument("--argon2-opslimit", type=int, default=None)
    p.add_argument("--argon2-memlimit", type=int, default=None, help="bytes")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--no-access-log", action="store_true")
    p.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="shut down when the parent process dies (for tests and launchers)",
    )
    return p.parse_args(argv)


def _emit(obj: dict) -> None:
    try:
        sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):  # reader gone (e.g. launcher died): not an error
        sys.stdout = open(os.devnull, "w")  # also absorbs the exit-time flush


def _watch_parent(server: uvicorn.Server) -> None:
    parent = os.getppid()

    def watch() -> None:
        while not server.should_exit:
            if os.getppid() != parent:  # re-parented: our launcher is gone
                server.should_exit = True
                return
            time.sleep(0.5)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    config = AuthConfig.from_env(
        db_path=args.db,
        admin_api_key_file=args.admin_key_file,
        access_ttl_s=args.access_ttl,
        refresh_ttl_s=args.refresh_ttl,
        argon2_opslimit=args.argon2_opslimit,
        argon2_memlimit=args.argon2_memlimit,
    )
    app = create_app(config)  # opens the database: fail before announcing the port
    sock = bind_listener(args.host, args.port, backlog=128)

    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["handlers"]["access"]["stream"] = "ext://sys.stderr"  # stdout = JSON lines only
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_config=log_config,
            log_level=args.log_level,
            access_log=not args.no_access_log,
            lifespan="on",
            timeout_graceful_shutdown=5,
            timeout_keep_alive=KEEP_ALIVE_S,
            server_header=False,
        )
    )

    # A signal that arrives before uvicorn installs its own handlers (or that uvicorn re-raises
    # after restoring these on shutdown) just asks the server to stop: exit code stays 0.
    def _stop(_signum, _frame) -> None:
        server.should_exit = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if args.exit_with_parent:
        _watch_parent(server)

    host, port = sock.getsockname()[:2]
    url_host = f"[{host}]" if ":" in host else host
    _emit(
        {
            "event": "listening",
            "host": host,
            "port": port,
            "pid": os.getpid(),
            "url": f"http://{url_host}:{port}",
            "db": config.db_path,
        }
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    _emit({"event": "stopped"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
