"""Where one single-order command's time goes in a member's and in the client's Python, in-process.

No cluster: the member side is the bridge's handler called with the log message already in its
input buffer (what MatchService.onSessionMessage hands over), split into its stages; the
crossing itself is a Java thread calling a Python ServiceHandler (CrossingProbe) with the main
thread parked in Java, as a member's is. The client side is what MatchClient does per command
besides waiting: encode the command and the request, and decode the reply and its payload.

Commands: a resting limit order (JSON, and the binary codec), then its cancel, one command per
log message, as a trader's single orders reach the service.

    python bench/single_order_path.py [--pairs 20000] [--rounds 5] [--before REV] [--profile]

Prints the table in microseconds per command (CPU time, medians over rounds); ``--before REV``
adds the whole member path of REV's bridge beside this tree's, alternated; ``--json`` keeps the
figures (bench/reports/single_order_path.md was written from them).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402

from bench.crossing_handler import service_handler  # noqa: E402
from pyengine import engine as engine_pkg  # noqa: E402
from pyengine.service.matching import MatchingService  # noqa: E402
from pyengine.wire import codec, protocol  # noqa: E402
from pyengine.wire.protocol import Channel, Command  # noqa: E402

CLIENT_ID = 77
SETUP = [
    {"op": "add_symbol", "symbol": "BTC-USDT", "base": "BTC", "quote": "USDT", "tick_size": "0.01",
     "lot_size": "0.001"},
    {"op": "deposit", "account": "alice", "asset": "USDT", "amount": "1000000000", "tx_id": "t1"},
]


def place(i: int) -> dict:
    # resting: a buy far below any sell (there is none), as bench/latency.py sends
    return {"op": "place", "account": "alice", "symbol": "BTC-USDT", "side": "buy", "type": "limit",
            "tif": "GTC", "price": f"{100 + i % 50}.00", "qty": "0.010", "client_order_id": f"o{i}"}


def cancel(i: int) -> dict:
    return {"op": "cancel", "account": "alice", "symbol": "BTC-USDT", "client_order_id": f"o{i}"}


def new_service() -> MatchingService:
    s = MatchingService()
    s.on_start(0, None)
    msgs = [protocol.encode_request(CLIENT_ID, [Command(i + 1, Channel.ENGINE_JSON, orjson.dumps(c))])
            for i, c in enumerate(SETUP)]
    for i, m in enumerate(msgs):
        s.on_message(1, 1, i, m)
    return s


def messages(n_pairs: int, binary: bool, first_rid: int = 100) -> list[bytes]:
    channel = Channel.ENGINE_BINARY if binary else Channel.ENGINE_JSON
    enc = codec.encode_command if binary else orjson.dumps
    out = []
    rid = first_rid
    for i in range(n_pairs):
        for cmd in (place(i), cancel(i)):
            out.append(protocol.encode_request(CLIENT_ID, [Command(rid, channel, enc(cmd))]))
            rid += 1
    return out


class FakeJavaService:
    """What ServiceBridge.attach maps: two direct buffers (here bytearrays of the same size)."""

    def __init__(self, capacity: int = 4 << 20) -> None:
        self.inp = bytearray(capacity)
        self.out = bytearray(capacity)

    def inputBuffer(self) -> bytearray:  # noqa: N802 - the Java method's name
        return self.inp

    def outputBuffer(self) -> bytearray:  # noqa: N802
        return self.out


def per_command_us(fn: Callable[[int], object], n: int) -> float:
    # CPU time of this thread, not wall time: on a shared machine a wall clock counts the time
    # the thread waited for a core too
    t0 = time.thread_time_ns()
    for i in range(n):
        fn(i)
    return (time.thread_time_ns() - t0) / n / 1000


def stage_times(binary: bool, n_pairs: int) -> dict[str, float]:
    """us per command of each stage, each stage timed on its own over the same commands."""
    from pyengine.node.bridge import ServiceBridge

    n = 2 * n_pairs
    msgs = messages(n_pairs, binary)
    out: dict[str, float] = {}

    # decode of the request frame
    out["decode request frame"] = per_command_us(lambda i: protocol.decode_request(msgs[i]), n)
    decoded = [protocol.decode_request(m)[1][0] for m in msgs]
    # the command payload (JSON or codec) to a dict
    if binary:
        out["decode command"] = per_command_us(lambda i: codec.decode_command(decoded[i].payload), n)
    else:
        out["decode command"] = per_command_us(lambda i: orjson.loads(decoded[i].payload), n)
    cmds = [orjson.loads(c.payload) if not binary else codec.decode_command(c.payload) for c in decoded]
    # the engine alone, on decoded dicts
    eng = new_service().engine
    results: list[list[dict]] = [[] for _ in range(n)]

    def apply(i: int) -> None:
        results[i] = eng.apply(cmds[i], 1_000_000)

    out["engine apply"] = per_command_us(apply, n)
    if binary:
        out["encode events"] = per_command_us(lambda i: codec.encode_events(results[i]), n)
        payloads = [codec.encode_events(r) for r in results]
    else:
        out["encode events"] = per_command_us(lambda i: orjson.dumps(results[i]), n)
        payloads = [orjson.dumps(r) for r in results]
    # the reply cache (dedupe) and the sequence hash, as _apply does them
    svc = new_service()

    def dedupe(i: int) -> None:
        c = decoded[i]
        svc.replies.get(CLIENT_ID, c.request_id)
        svc.replies.too_old(CLIENT_ID, c.request_id)
        svc.replies.put(CLIENT_ID, c.request_id, 0, payloads[i])

    out["reply cache get+put"] = per_command_us(dedupe, n)
    import hashlib

    chain = [b"\0" * 16]

    def chain_hash(i: int) -> None:
        chain[0] = hashlib.blake2b(chain[0] + decoded[i].payload, digest_size=16).digest()

    out["sequence hash"] = per_command_us(chain_hash, n)
    answers = [protocol.Answer(c.request_id, 0, p) for c, p in zip(decoded, payloads, strict=True)]
    out["encode reply frame"] = per_command_us(
        lambda i: protocol.encode_replies([answers[i]], 1 << 17), n)
    counters = svc.counters
    out["counters"] = per_command_us(lambda i: counters.count([decoded[i]], [answers[i]]), n)
    md = svc.market
    out["market data collect"] = per_command_us(
        lambda i: md.collect(svc.engine, svc.owned, svc.moved, True, 1 << 17), n)

    # whole: the service's on_message, then the bridge's handler (+ timer, frames into the buffer)
    svc = new_service()
    out["service on_message (whole)"] = per_command_us(lambda i: svc.on_message(1, i, i, msgs[i]), n)
    bridge = ServiceBridge(new_service())
    bridge.attach(FakeJavaService())
    inp = bridge.input

    def handler(i: int) -> None:
        m = msgs[i]
        inp[: len(m)] = m  # Java's copy into the direct buffer (not Python's cost on a member)
        bridge.onSessionMessage(1, i, i, len(m))

    out["bridge handler (whole)"] = per_command_us(handler, n)
    return out


def client_times(binary: bool, n_pairs: int) -> dict[str, float]:
    """MatchClient's Python per command: command and request encode, reply decode (no threads)."""
    n = 2 * n_pairs
    cmds = [c for i in range(n_pairs) for c in (place(i), cancel(i))]
    out: dict[str, float] = {}
    enc = codec.encode_command if binary else orjson.dumps
    out["client: encode command"] = per_command_us(lambda i: enc(cmds[i]), n)
    payloads = [enc(c) for c in cmds]
    ch = Channel.ENGINE_BINARY if binary else Channel.ENGINE_JSON
    out["client: encode request frame"] = per_command_us(
        lambda i: protocol.encode_request(CLIENT_ID, [Command(i + 1, ch, payloads[i])]), n)
    svc = new_service()
    replies = [f[0][1] for f in (svc.on_message(1, i, i, m) for i, m in enumerate(messages(n_pairs, binary)))]
    out["client: decode reply frame"] = per_command_us(lambda i: protocol.decode_reply(replies[i]), n)
    answers = [protocol.decode_reply(r)[1][0].payload for r in replies]
    dec = codec.decode_events if binary else orjson.loads
    out["client: decode events"] = per_command_us(lambda i: dec(answers[i]), n)
    # what the SDK converts at the JPype boundary: the request into a Java byte[] for offer(), and
    # the byte[] poll() returns back into bytes
    import jpype

    requests = [protocol.encode_request(CLIENT_ID, [Command(i + 1, ch, payloads[i])]) for i in range(n)]
    jbyte_array = jpype.JArray(jpype.JByte)
    out["client: request -> Java byte[]"] = per_command_us(lambda i: jbyte_array(requests[i]), n)
    jreplies = [jbyte_array(r) for r in replies]
    out["client: Java byte[] -> reply bytes"] = per_command_us(lambda i: memoryview(jreplies[i]).tobytes(), n)
    return out


def crossing_us(iterations: int) -> dict[str, float]:
    """Java thread -> Python handler, main thread parked in Java, a handler that returns at once:
    with a thread state per call (JPype's default for a thread Python does not know) and with the
    calling thread's state kept (pin_thread_state, what the bridge does); and kept, converting the
    four arguments as the bridge does (int())."""
    import jpype

    from pyengine.node.bridge import pin_thread_state

    def handler(pin: bool, convert: bool):
        def on_message(s, t, p, n) -> int:
            if pin:
                pin_thread_state()
            if convert:
                int(s), int(t), int(p), int(n)
            return 0

        return service_handler(on_message)

    probe = jpype.JClass("io.matchx.cluster.CrossingProbe")

    def cpu_us(pin: bool, convert: bool) -> float:
        # the process's CPU time over the calls (the main thread parked in Java meanwhile), not
        # the probe's wall time: on a shared machine that counts waiting for a core too
        cpu0 = time.process_time_ns()
        probe.measure(handler(pin, convert), iterations)  # a new Java thread each time
        return (time.process_time_ns() - cpu0) / (iterations + min(1000, iterations)) / 1000

    return {"crossing, no-op handler, thread state per call (before)": cpu_us(False, False),
            "crossing, no-op handler, thread state kept": cpu_us(True, False),
            "crossing, kept, + int() of the 4 arguments": cpu_us(True, True)}


def load_before(rev: str) -> tuple[ModuleType, ModuleType]:
    """The bridge and wire protocol modules as they were at git revision ``rev``: the "before" of
    the side-by-side, run in this same process against the same service and engine."""
    root = Path(__file__).resolve().parent.parent
    mods = []
    for path, name in (("pyengine/wire/protocol.py", "_before_protocol"),
                       ("pyengine/node/bridge.py", "_before_bridge")):
        src = subprocess.run(["git", "-C", str(root), "show", f"{rev}:{path}"], check=True,
                             capture_output=True, text=True).stdout
        mod = ModuleType(name)
        sys.modules[name] = mod  # dataclasses look their module up while building the class
        exec(compile(src, f"{rev}:{path}", "exec"), mod.__dict__)  # noqa: S102 - our own code at a revision
        mods.append(mod)
    return mods[0], mods[1]


def handler_crossing_us(n_pairs: int, bridge_mod: ModuleType, encode_replies: Callable) -> dict[str, float]:
    """The whole member-side path of one command, crossing included: a Java thread calls a proxy
    that puts the next log message into the bridge's input buffer (Java's copy on a member) and
    runs ``bridge_mod``'s ServiceBridge handler over a real MatchingService whose reply encoding
    is ``encode_replies``. CPU of the process per command, and the probe's wall time."""
    import jpype

    msgs = messages(n_pairs, False)
    bridge = bridge_mod.ServiceBridge(new_service())
    bridge.attach(FakeJavaService())
    inp = bridge.input
    # measure() makes min(1000, n) warm-up calls, then n timed ones: n + its warm-up = every message
    timed = len(msgs) - 1000 if len(msgs) >= 2000 else len(msgs) // 2
    fed = [0]

    def feed(s, t, p, n) -> int:
        m = msgs[fed[0]]
        fed[0] += 1
        inp[: len(m)] = m
        return bridge.onSessionMessage(1, t, p, len(m))

    probe = jpype.JClass("io.matchx.cluster.CrossingProbe")
    keep = protocol.encode_replies
    protocol.encode_replies = encode_replies  # what MatchingService.on_message calls
    try:
        cpu0 = time.process_time_ns()
        wall = float(probe.measure(service_handler(feed), timed)) / 1000  # on one new Java thread
        cpu = (time.process_time_ns() - cpu0) / len(msgs) / 1000
    finally:
        protocol.encode_replies = keep
    return {"cpu": cpu, "wall": wall}


def profile(binary: bool, n_pairs: int) -> str:
    from pyengine.node.bridge import ServiceBridge

    msgs = messages(n_pairs, binary)
    bridge = ServiceBridge(new_service())
    bridge.attach(FakeJavaService())
    inp = bridge.input
    prof = cProfile.Profile()
    prof.enable()
    for i, m in enumerate(msgs):
        inp[: len(m)] = m
        bridge.onSessionMessage(1, i, i, len(m))
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(18)
    return buf.getvalue()


def side_by_side(rev: str, rounds: int, n_pairs: int) -> dict[str, dict[str, list[float]]]:
    """Before (``rev``) and after (this tree), alternated: odd rounds run before first."""
    from pyengine.node import bridge as bridge_now

    before_protocol, before_bridge = load_before(rev)
    arms = {"before": (before_bridge, before_protocol.encode_replies),
            "after": (bridge_now, protocol.encode_replies)}
    out: dict[str, dict[str, list[float]]] = {"before": {"cpu": [], "wall": []}, "after": {"cpu": [], "wall": []}}
    for rnd in range(rounds):
        for arm in (("before", "after") if rnd % 2 == 0 else ("after", "before")):
            got = handler_crossing_us(n_pairs, *arms[arm])
            for k, v in got.items():
                out[arm][k].append(v)
            print(f"  round {rnd + 1} {arm}: {got['cpu']:.1f} us CPU, {got['wall']:.1f} us wall per command "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=20_000, help="place+cancel pairs per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--crossing-iterations", type=int, default=50_000)
    ap.add_argument("--before", metavar="REV",
                    help="also run the whole member path (crossing included) of git revision REV's "
                         "bridge and reply encoding beside this tree's, alternated")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of the bridge handler")
    ap.add_argument("--json", type=Path, help="write the medians as JSON here")
    args = ap.parse_args(argv)
    from pyengine import jvm

    jvm.start()  # the bridge module resolves its Java interface at import
    load0 = os.getloadavg()[0]
    print(f"engine: {'compiled (mypyc)' if engine_pkg.NATIVE else 'plain Python'}; load average {load0:.1f}",
          flush=True)
    table: dict[str, dict[str, list[float]]] = {"json": {}, "binary": {}}
    for _ in range(args.rounds):
        for kind in ("json", "binary"):
            binary = kind == "binary"
            for name, us in {**stage_times(binary, args.pairs), **client_times(binary, args.pairs)}.items():
                table[kind].setdefault(name, []).append(us)
        for name, us in crossing_us(args.crossing_iterations).items():
            for kind in table:
                table[kind].setdefault(name, []).append(us)
    medians = {k: {name: statistics.median(v) for name, v in rows.items()} for k, rows in table.items()}
    print(f"{'us per command (median of ' + str(args.rounds) + ' rounds)':<44} {'JSON':>8} {'binary':>8}")
    for name in medians["json"]:
        print(f"{name:<44} {medians['json'][name]:>8.2f} {medians['binary'][name]:>8.2f}")
    result: dict = {"native": engine_pkg.NATIVE, "medians": medians, "load_before": load0}
    if args.before:
        print(f"whole member path per command, crossing included: {args.before} beside this tree (JSON)")
        ab = side_by_side(args.before, args.rounds, args.pairs)
        result["side_by_side"] = {"rev": args.before, "runs": ab}
        for k in ("cpu", "wall"):
            b, a = statistics.median(ab["before"][k]), statistics.median(ab["after"][k])
            print(f"  {k}: before {b:.1f} us, after {a:.1f} us per command (median of {args.rounds}), "
                  f"after/before {a / b:.2f}")
    result["load_after"] = os.getloadavg()[0]
    print(f"load average after: {result['load_after']:.1f}")
    if args.json:
        args.json.write_text(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    if args.profile:
        for binary in (False, True):
            print(f"--- cProfile, bridge handler, {'binary' if binary else 'JSON'} ---")
            print(profile(binary, args.pairs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
