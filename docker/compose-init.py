"""Give the partitions of a compose deployment their symbols, as `matchctl up` does.

For every partition of the topology: wait until it has a leader, send the admin command
``own_symbols`` with the epochs of the coordinator's routes, then ``add_symbol`` for each symbol
it owns (``duplicate_symbol`` on a second run is fine). Exit 0 when every partition is done.

Runs in the `init` service of docker/compose.yaml (mounted into the image); run it again with
`docker/compose.sh run --rm init`. From the host, with the topology in a file:

    .venv/bin/python docker/compose-init.py --topology FILE \\
        --coordinator http://127.0.0.1:8080 --egress-host 172.30.77.1 \\
        [--auth-url http://127.0.0.1:8081 --password-file FILE]    # tokens on

(``pyengine.ops.system.System.assign_symbols`` does the same for `matchctl up`, with the client's
egress on 127.0.0.1, which is not where a container receives.)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path


def own_address(towards: str) -> str:
    """The local address that routes to ``towards`` (where the members must send egress)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((towards, 9))  # UDP connect sends nothing
        return s.getsockname()[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--topology", type=Path, help="topology file (docs/partitions.md)")
    src.add_argument("--topology-env", metavar="VAR", help="environment variable holding the topology JSON")
    p.add_argument("--coordinator", required=True, help="coordinator base URL, e.g. http://coordinator:8080")
    p.add_argument("--egress-host", help="address the members send answers to (default: this host's address "
                                         "towards the first member)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for coordinator and leaders")
    p.add_argument("--auth-url", help="with tokens on: the auth service, e.g. http://auth:8081")
    p.add_argument("--password-file", type=Path, help="with tokens on: the service user's password "
                                                      "(coordinator/auth/setup.py)")
    args = p.parse_args(argv)

    import httpx

    from pyengine.client import MatchClient
    from pyengine.node.topology import Topology

    if args.topology is not None:
        topology = Topology.load(args.topology)
    else:
        topology = Topology.from_dict(json.loads(os.environ[args.topology_env]))
    deadline = time.monotonic() + args.timeout
    credentials: dict = {}
    if args.auth_url:  # tokens on: the control plane's own credential (docs/auth.md)
        from coordinator.auth.setup import service_token_provider

        keys = args.password_file.parent / "keys.json"
        while not keys.is_file() and time.monotonic() < deadline:
            time.sleep(1)  # the auth container writes it last, once its service user exists
        credentials["token_provider"] = service_token_provider(args.auth_url, args.password_file.read_text().strip())

    routes = None
    while routes is None:
        try:
            routes = httpx.get(f"{args.coordinator}/v1/routes", timeout=5).raise_for_status().json()
        except httpx.HTTPError as exc:
            if time.monotonic() > deadline:
                print(f"init: coordinator {args.coordinator} not answering: {exc}", file=sys.stderr)
                return 1
            time.sleep(1)
    owned: dict[str, dict[str, int]] = {part.id: {} for part in topology.partitions}
    for symbol, route in sorted(routes["symbols"].items()):
        owned.setdefault(route["partition"], {})[symbol] = route["epoch"]

    for part in topology.partitions:
        endpoints = topology.ingress_endpoints(part.id)
        first_member_host = endpoints.split(",")[0].split("=")[1].rsplit(":", 1)[0]
        egress = args.egress_host or own_address(first_member_host)
        print(f"init: partition {part.id}: ingress {endpoints}, egress {egress}", flush=True)
        with MatchClient(endpoints, egress_host=egress, **credentials) as client:
            if not client.wait_connected(max(1.0, deadline - time.monotonic())):
                print(f"init: partition {part.id}: no leader: {client.last_error}", file=sys.stderr)
                return 1
            left = max(5.0, deadline - time.monotonic())
            client.admin({"op": "own_symbols", "symbols": owned[part.id]}, timeout=left)
            for symbol in owned[part.id]:
                spec = topology.symbol(symbol)
                if spec is None:
                    print(f"init: {symbol} is routed to {part.id} but not in the topology; not added")
                    continue
                first = (client.request(spec.add_symbol_command(), timeout=left).events or [{}])[0]
                if first.get("type") == "rejected" and first.get("reason") != "duplicate_symbol":
                    print(f"init: partition {part.id} refused {symbol}: {first}", file=sys.stderr)
                    return 1
        print(f"init: partition {part.id} owns {owned[part.id]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
