"""Single-order latency: ours beside a pure-Java Aeron floor, in the same run (issue #20).

Each system is a 3-member cluster on the same ports and cluster settings:

* **ours**: members started as ``matchctl cluster up`` starts them (``LocalCluster``), one
  ``MatchClient`` (Python, JPype) in its own process sending one command per order through
  ``submit`` (resting orders and their cancels, alternating);
* **floor**: the same member contexts around a Java service that only echoes each message
  (``io.matchx.cluster.bench.EchoFloor``) and a one-thread Java client
  (``EchoFloorClient``) with the same embedded-driver settings as our SDK.

Phases, the same for both clients: idle (nothing sent: idle CPU per member), warm-up, one at a
time (``rtt``: the next command when the answer of the one before is back), then open loop at
each rate (``open-R``: R commands per second for ``--duration-s``, whatever comes back). Latency
runs from each command's *planned* send time to its answer (no coordinated omission: a stall
counts for every command planned behind it), into HdrHistograms. CPU per order of each process
is utime+stime from /proc/PID/stat over the phase, divided by the commands answered.

Systems alternate (ours, floor, floor, ours, ...) over ``--rounds`` so a change of the machine's
load hits both alike; a ``--variant NAME:key=value,...`` runs both with other layout settings
(ClusterLayout fields, e.g. ``idle_max_park_us=100``; ``jar=PATH`` for another build of the Java
side), so settings are compared in one run too.

    python bench/latency.py [--rates 1000,2000,5000,10000,20000] [--rounds 2]
        [--variant default --variant park100:idle_max_park_us=100] [--report bench/reports/latency.md]

Every process, port and /dev/shm directory it creates is cleaned up, also on failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    CpuMeter,
    MachineLoad,
    environment,
    hist_summary,
    log,
    new_histogram,
    parse_variant,
    pin_jar,
    publish_report,
    setup_commands,
)
from pyengine.node.localcluster import LocalCluster, free_port_base, ports_free  # noqa: E402
from pyengine.node.settings import PORTS_PER_MEMBER, ClusterLayout, Timeouts  # noqa: E402

SYMBOL = "BTC-USD"
FLOOR_MEMBER = "io.matchx.cluster.bench.EchoFloor"
FLOOR_CLIENT = "io.matchx.cluster.bench.EchoFloorClient"
# MatchClient's ClusterClient parks its driver and poller up to this long; the floor's client
# gets the same unless a variant says otherwise
SDK_PARK_US = 500
# --relaxed-timeouts (as the integration tests' TEST_TIMEOUTS): at a load average of 60-100 on
# 2 cores a member is often not scheduled for 120 ms, and the shipped timing then elects new
# leaders all through a run; the latency of a steady cluster does not depend on these
RELAXED_TIMEOUTS = Timeouts(heartbeat_interval_ms=100, heartbeat_timeout_ms=2000, election_timeout_ms=300,
                            startup_canvass_timeout_ms=4000)


# ---------------------------------------------------------------------------- our client (worker)


def order_commands(count: int, tag: str) -> list[dict]:
    """A resting buy far below the mid, then its cancel, alternating: every command is one
    order-entry round trip through the engine, and the book stays small."""
    cmds: list[dict] = []
    for i in range(count):
        coid = f"{tag}{i // 2}"
        if i % 2 == 0:
            cmds.append({"op": "place", "account": "a0", "symbol": SYMBOL, "side": "buy", "price": "90.00",
                         "qty": "0.001", "client_order_id": coid})
        else:
            cmds.append({"op": "cancel", "account": "a0", "symbol": SYMBOL, "client_order_id": coid})
    return cmds


def _emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def ours_phase(client, out: Path, name: str, count: int, interval_ns: int, drain_s: float,
               binary: bool) -> None:
    """One phase of our client; reports it as EchoFloorClient does (PHASE lines, OUT/name.lat)."""
    cmds = order_commands(count, name.replace("-", "") + "x")
    submit = client.submit_binary if binary else client.submit
    request = (lambda c, t: client.submit_binary(c).result(t)) if binary else client.request
    planned = [0] * count
    done = [0] * count
    failed = [0]
    first_error: list[str] = []
    all_done = threading.Event()
    remaining = [count]
    lock = threading.Lock()
    clock = time.perf_counter_ns

    def finished(i: int, fut) -> None:
        done[i] = clock()
        exc = fut.exception()
        if exc is not None:
            failed[0] += 1
            if not first_error:
                first_error.append(repr(exc)[:200])
        with lock:
            remaining[0] -= 1
            if remaining[0] == 0:
                all_done.set()

    _emit(f"PHASE {name} begin")
    start = clock() + 1_000_000
    # the wall clock of the planned start: command i was due at it + i * interval (--keep timelines)
    (out / f"{name}.start").write_text(f"{time.time() + (start - clock()) / 1e9:.6f} {interval_ns}\n")
    sent = 0
    if interval_ns == 0:
        from pyengine import jvm

        trace = jvm.trace if jvm.TRACE else None  # bench/rtt_breakdown.py: stages 100 and 105
        for i, cmd in enumerate(cmds):
            planned[i] = clock()
            if trace:
                trace(100)
            try:
                request(cmd, drain_s)  # MatchClient.request: submit(cmd).result(), or its sync path
            except Exception as exc:  # noqa: BLE001 - counted; the bench reports failures
                failed[0] += 1
                if not first_error:
                    first_error.append(repr(exc)[:200])
            if trace:
                trace(105)
            done[i] = clock()
            sent += 1
    else:
        while sent < count:
            now = clock()
            due = start + sent * interval_ns
            if due > now:
                time.sleep((due - now) / 1e9)
                continue
            while sent < count and start + sent * interval_ns <= now:
                planned[sent] = start + sent * interval_ns
                submit(cmds[sent]).add_done_callback(lambda f, i=sent: finished(i, f))
                sent += 1
        all_done.wait(drain_s)
    elapsed = clock() - start
    lat = array("q", (done[i] - planned[i] for i in range(sent) if done[i]))
    with open(out / f"{name}.lat", "wb") as f:
        lat.tofile(f)
    if failed[0]:
        _emit(f"WARN {name}: {failed[0]} commands failed, the first with {first_error[0] if first_error else '?'}")
    _emit(f"PHASE {name} end {sent} {len(lat)} {elapsed}")
    time.sleep(0.5)


def ours_worker(spec: dict) -> int:
    """Our client process: connect, fund one account, then the phases."""
    from pyengine.client.match_client import MatchClient

    logging.basicConfig(level=logging.WARNING)
    out = Path(spec["out"])
    gc_log = GcLog(out / "client_gc.txt")
    with open(out / "pids.txt", "a") as f:
        f.write(f"client {os.getpid()}\n")
    with MatchClient(spec["endpoints"], **spec.get("client_kw", {})) as client:
        name_python_threads(client)
        if not client.wait_connected(120):
            _emit(f"ERROR not connected: {client.last_error}")
            return 1
        _emit(f"CONNECTED {client.leader_member_id}")
        for cmd in setup_commands(1, (SYMBOL,)):
            client.request(cmd, timeout=60)
        if spec.get("gc_freeze"):
            import gc

            gc.freeze()
        if spec["idle_s"] > 0:
            _emit("PHASE idle begin")
            t0 = time.perf_counter_ns()
            time.sleep(spec["idle_s"])
            _emit(f"PHASE idle end 0 0 {time.perf_counter_ns() - t0}")
        ours_phase(client, out, "warmup", spec["warmup"], 0, spec["drain_s"], spec["binary"])
        ours_phase(client, out, "rtt", spec["rtt"], 0, spec["drain_s"], spec["binary"])
        for rate in spec["rates"]:
            ours_phase(client, out, f"open-{rate}", round(rate * spec["duration_s"]), 1_000_000_000 // rate,
                       spec["drain_s"], spec["binary"])
    gc_log.close()
    return 0


def name_python_threads(client) -> None:
    """Gives the SDK's Python threads and the phases' thread their own names in /proc (all show
    as "python" otherwise), so the per-thread profile tells the send, receive and caller threads
    apart."""
    names = {threading.main_thread().native_id: "py-caller", client._sender.native_id: "py-send",
             client._receiver.native_id: "py-receive"}
    for tid, name in names.items():
        try:
            Path(f"/proc/self/task/{tid}/comm").write_text(name)
        except OSError:
            pass  # a profile without the names, not a failed run


class GcLog:
    """The client's cyclic collections (wall clock at the start, generation, ms), one a line: a
    collection holds the GIL, so the sender and the receive thread wait it out."""

    def __init__(self, path: Path) -> None:
        import gc

        self._gc = gc
        self._file = open(path, "w")  # noqa: SIM115 - closed in close()
        self._t0 = 0.0
        gc.callbacks.append(self._event)

    def _event(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.time()
        else:
            self._file.write(f"{self._t0:.6f} {info['generation']} {1000 * (time.time() - self._t0):.3f}\n")

    def close(self) -> None:
        self._gc.callbacks.remove(self._event)
        self._file.close()


# ---------------------------------------------------------------------------- one system, one round


@dataclass
class PhaseResult:
    sent: int
    answered: int
    elapsed_s: float
    latencies_ns: array
    cpu_s: dict[str, float]  # process -> CPU seconds over the phase
    threads: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # process -> top threads (% core)
    client_threads: dict[str, float] = field(default_factory=dict)  # the client's threads: CPU seconds


def drive_client(cmd: list[str], pids: dict[str, int], out: Path, timeout_s: float,
                 env: dict[str, str] | None = None) -> dict[str, PhaseResult]:
    """Runs a client process, measuring the CPU of ``pids`` and of the client between each
    phase's begin and end lines."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            env=env, stdin=subprocess.DEVNULL)
    results: dict[str, PhaseResult] = {}
    tail: list[str] = []
    timer = threading.Timer(timeout_s, proc.kill)
    timer.start()
    try:
        meter: CpuMeter | None = None
        assert proc.stdout is not None
        for line in proc.stdout:
            words = line.split()
            if words[:1] != ["PHASE"]:
                tail = (tail + [line])[-30:]
                if words[:1] in (["WARN"], ["ERROR"], ["CONNECTED"]):
                    log("  client: " + line.rstrip())
                continue
            name, what = words[1], words[2]
            if what == "begin":
                meter = CpuMeter({**pids, "client": proc.pid})
                meter.start()
            elif meter is not None:
                meter.stop()
                sent, answered, elapsed = int(words[3]), int(words[4]), int(words[5])
                lat = array("q")
                path = out / f"{name}.lat"
                if path.is_file():
                    lat.frombytes(path.read_bytes())
                results[name] = PhaseResult(
                    sent, answered, elapsed / 1e9, lat,
                    {k: sum(v.values()) for k, v in meter.used.items()},
                    {k: meter.top_threads(k, 5) for k in meter.used}, dict(meter.used.get("client", {})))
                log(f"  {name}: {answered}/{sent} answered in {elapsed / 1e9:.1f}s")
        proc.wait(30)
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0 or "rtt" not in results:
        raise RuntimeError(f"client {cmd[:3]} failed (rc {proc.returncode}):\n" + "".join(tail))
    return results


def java_command(jar: Path, main: str, *args: str) -> list[str]:
    from pyengine.jvm import JVM_OPTIONS

    java = Path(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") else "java"
    return [str(java), *JVM_OPTIONS, "-cp", str(jar), main, *args]


def client_spec(args, out: Path, endpoints: str) -> dict:
    return {"out": str(out), "endpoints": endpoints, "idle_s": args.idle_s, "warmup": args.warmup,
            "rtt": args.rtt, "rates": args.rates, "duration_s": args.duration_s, "drain_s": args.drain_s,
            "binary": args.binary}


def run_ours(args, layout: ClusterLayout, out: Path, client_kw: dict,
             gc_freeze: bool = False) -> dict[str, PhaseResult]:
    """``client_kw``: MatchClient keyword arguments (a variant's client_NAME=value); ``gc_freeze``
    (a variant's gc_freeze=1): the client process freezes what it holds before the phases, so its
    cyclic collections no longer rescan the JVM bridge's and the SDK's objects."""
    cluster = LocalCluster(layout, log_level="WARNING")
    try:
        cluster.start()
        cluster.await_leader(120)
        cluster.await_followers(2, 120)
        pids = {f"member {m}": pid for m, pid in cluster.pids().items()}
        spec = {**client_spec(args, out, cluster.ingress_endpoints()), "client_kw": client_kw, "gc_freeze": gc_freeze}
        stop = threading.Event()
        watch = threading.Thread(target=watch_snapshots, args=(cluster, out / "snapshots.txt", stop), daemon=True)
        if args.keep:
            (out / "pids.txt").write_text("".join(f"{name} {pid}\n" for name, pid in pids.items()))
            watch.start()
        try:
            return drive_client([sys.executable, __file__, "--worker", json.dumps(spec)], pids, out,
                                args.client_timeout_s)
        finally:
            stop.set()
            if watch.is_alive():
                watch.join(5)
    finally:
        cluster.stop()


def keep_only_text(directory: str, names: list[str]) -> list[str]:
    """copytree's ignore for --keep: logs, latencies and the bench's files, not Aeron's."""
    kept = (".log", ".txt", ".lat", ".start", ".json", ".properties")
    return [n for n in names if not n.endswith(kept) and not os.path.isdir(os.path.join(directory, n))]


def watch_snapshots(cluster: LocalCluster, path: Path, stop: threading.Event) -> None:
    """For --keep's timelines: every snapshot a member reports in its status file (member, wall
    clock ms, build and write ms, bytes), and every 100 ms the CPU ticks of each member and of
    the client (cpu.txt: wall clock s, then name=ticks)."""
    seen: dict[int, int] = {}
    pids = {f"member{m}": pid for m, pid in cluster.pids().items()}
    tick = os.sysconf("SC_CLK_TCK")
    with open(path, "w") as f, open(path.with_name("cpu.txt"), "w") as cpu:
        cpu.write(f"ticks_per_s {tick}\n")
        while not stop.wait(0.1):
            for m in range(cluster.layout.members):
                s = cluster.member_status(m)
                at = s.get("last_snapshot_epoch_ms", -1)
                if at > 0 and seen.setdefault(m, at) != at:
                    seen[m] = at
                    f.write(f"{m} {at} {s.get('last_snapshot_build_ms')} {s.get('last_snapshot_write_ms')} "
                            f"{s.get('last_snapshot_bytes')}\n")
                    f.flush()
            if "client" not in pids and path.with_name("pids.txt").is_file():
                for line in path.with_name("pids.txt").read_text().splitlines():
                    if line.startswith("client "):
                        pids["client"] = int(line.split()[1])
            row = [f"{time.time():.3f}"]
            for name, pid in pids.items():
                try:
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                row.append(f"{name}={int(fields[11]) + int(fields[12])}")  # utime + stime
            cpu.write(" ".join(row) + "\n")


def run_floor(args, layout: ClusterLayout, out: Path, jar: Path, client_park_us: int) -> dict[str, PhaseResult]:
    procs: list[subprocess.Popen] = []
    client_dir = f"/dev/shm/matchx-floor-client-{os.getpid()}-{layout.port_base}"
    try:
        for m in range(layout.members):
            member_dir = layout.member_dir(m)
            member_dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(layout.aeron_dir(m), ignore_errors=True)
            props = member_dir / "member.properties"
            props.write_text("".join(f"{k}={v}\n" for k, v in layout.member_properties(m).items()))
            with open(member_dir / "member.log", "ab") as mlog:
                procs.append(subprocess.Popen(java_command(jar, FLOOR_MEMBER, str(props)), stdout=mlog,
                                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        pids = {f"member {m}": p.pid for m, p in enumerate(procs)}
        s = client_spec(args, out, layout.ingress_endpoints())
        cmd = java_command(jar, FLOOR_CLIENT, "--endpoints", s["endpoints"], "--aeron-dir", client_dir,
                           "--out", str(out), "--idle-s", str(args.idle_s), "--warmup", str(args.warmup),
                           "--rtt", str(args.rtt), "--rates", ",".join(map(str, args.rates)),
                           "--duration-s", str(args.duration_s), "--drain-s", str(int(args.drain_s)),
                           "--park-us", str(client_park_us), "--size", str(args.floor_size))
        return drive_client(cmd, pids, out, args.client_timeout_s)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for m in range(layout.members):
            shutil.rmtree(layout.aeron_dir(m), ignore_errors=True)
        shutil.rmtree(client_dir, ignore_errors=True)


# ---------------------------------------------------------------------------- variants and the report


@dataclass
class Totals:
    """One (variant, system, phase) over every round."""

    hist: object = field(default_factory=new_histogram)
    sent: int = 0
    answered: int = 0
    elapsed_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    threads: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    client_threads: dict[str, float] = field(default_factory=dict)

    def add(self, r: PhaseResult) -> None:
        for ns in r.latencies_ns:
            self.hist.record_value(max(1, ns // 1000))
        self.sent += r.sent
        self.answered += r.answered
        self.elapsed_s += r.elapsed_s
        for k, v in r.cpu_s.items():
            self.cpu_s[k] = self.cpu_s.get(k, 0.0) + v
        self.threads = r.threads  # the last round's profile
        for k, v in r.client_threads.items():
            self.client_threads[k] = self.client_threads.get(k, 0.0) + v

    def client_profile(self, n: int = 8) -> str:
        """The client's busiest threads over every round: us of CPU per answered command."""
        if not self.answered:
            return "-"
        top = sorted(self.client_threads.items(), key=lambda kv: -kv[1])[:n]
        return ", ".join(f"{name} {1e6 * s / self.answered:.1f}" for name, s in top)

    def members_cpu(self) -> float:
        return sum(v for k, v in self.cpu_s.items() if k.startswith("member"))

    def per_order_us(self, key: str | None = None) -> float:
        used = self.members_cpu() if key is None else self.cpu_s.get(key, 0.0)
        return 1e6 * used / self.answered if self.answered else float("nan")


def fmt(x: float) -> str:
    return "-" if x != x else (f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}")


def _side(summary: dict) -> str:
    """p50 | p99 | p99.9 | max of one system, or dashes when it did not run."""
    if not summary.get("count"):
        return " | ".join(["-"] * 4)
    return " | ".join(fmt(summary[k]) for k in ("p50_ms", "p99_ms", "p999_ms", "max_ms"))


def _ratio(ours: dict, floor: dict, key: str) -> str:
    if not ours.get("count") or not floor.get("count"):
        return "-"
    return f"{ours[key] / floor[key]:.1f}x"


def _rate(t: Totals | None, summary: dict) -> str:
    if t is None or not summary.get("count"):
        return "-"
    rate = t.answered / t.elapsed_s if t.elapsed_s else 0
    lost = "" if t.answered == t.sent else f" ({t.sent - t.answered} unanswered)"
    return f"{rate:,.0f}{lost}"


def _cpu(t: Totals | None, summary: dict, who: str | None = None) -> str:
    if t is None or not summary.get("count"):
        return "-"
    return fmt(t.per_order_us(who) if who else t.per_order_us())


def report(args, totals: dict[tuple[str, str, str], Totals], variants: list[tuple[str, dict]], env: str,
           load: str, started: str) -> str:
    lines = [
        "# Single-order latency: ours beside the Aeron floor",
        "",
        f"Command: `python bench/latency.py {' '.join(args.argv)}`".rstrip() + " (bench/latency.py)",
        "",
        f"Machine: {env}; started {started}.",
        f"**{load}**. The load is other sessions' work on the same 2 cores: every figure below",
        "includes waiting for a core, for ours and the floor alike (they alternate, round by round).",
        "",
        ("Raft timing relaxed for both systems (--relaxed-timeouts: heartbeat 100/2000 ms, election 300 ms); "
         "steady-state latency does not depend on it." if args.relaxed_timeouts else "Shipped Raft timing."),
        "",
        "Ours: 3 members as `matchctl cluster up` starts them, one MatchClient (Python) sending one "
        f"{'binary' if args.binary else 'JSON'} command per order (a resting place, then its cancel). Floor: the same "
        "member contexts and ports around a Java echo service, one Java client thread "
        f"({args.floor_size}-byte messages). Latency from each command's planned send time (ms); "
        "CPU per order in us (utime+stime of the process over the phase / commands answered).",
        "",
    ]
    for vname, kw in variants:
        lines += [f"## Variant `{vname}`" + (f": {', '.join(f'{k}={v}' for k, v in kw.items())}" if kw else
                                              " (the shipped settings)"), ""]
        idle = {s: totals.get((vname, s, "idle")) for s in ("ours", "floor")}
        if all(idle.values()):
            cells = []
            for s in ("ours", "floor"):
                t = idle[s]
                per = [100 * v / t.elapsed_s for k, v in sorted(t.cpu_s.items()) if k.startswith("member")]
                client = 100 * t.cpu_s.get("client", 0.0) / t.elapsed_s
                cells.append(f"{s}: " + ", ".join(f"{p:.1f}%" for p in per) + f" (its client {client:.1f}%)")
            lines += ["Idle CPU per member (% of one core, a connected client sending nothing): " +
                      "; ".join(cells), ""]
        lines += ["| phase | ours p50 | p99 | p99.9 | max | floor p50 | p99 | p99.9 | max | ratio p50 | "
                  "ratio p99 | answered/s ours / floor | CPU us/order members ours / floor | client ours / floor |",
                  "|---|" + "---|" * 13]
        for phase in ["rtt"] + [f"open-{r}" for r in args.rates]:
            o, f = totals.get((vname, "ours", phase)), totals.get((vname, "floor", phase))
            so = hist_summary(o.hist) if o is not None else {}
            sf = hist_summary(f.hist) if f is not None else {}
            if not so.get("count") and not sf.get("count"):
                continue
            # one system alone (--systems ours or floor): its columns, dashes for the other's
            lines.append(f"| {phase} | {_side(so)} | {_side(sf)} | {_ratio(so, sf, 'p50_ms')} | "
                         f"{_ratio(so, sf, 'p99_ms')} | {_rate(o, so)} / {_rate(f, sf)} | "
                         f"{_cpu(o, so)} / {_cpu(f, sf)} | {_cpu(o, so, 'client')} / {_cpu(f, sf, 'client')} |")
        lines.append("")
        lines.append("The client's threads, us of CPU per answered command (every round):")
        for phase in ["rtt"] + [f"open-{r}" for r in args.rates]:
            for s in ("ours", "floor"):
                t = totals.get((vname, s, phase))
                if t is not None and t.answered:
                    lines.append(f"- {phase}, {s}: {t.client_profile()}")
        lines.append("")
        for s in ("ours", "floor"):
            t = totals.get((vname, s, "rtt"))
            if t is None:
                continue
            lines.append(f"Profile, one at a time, {s} (busiest threads, % of one core over the phase):")
            for proc_name, top in sorted(t.threads.items()):
                lines.append(f"- {proc_name}: " + ", ".join(f"{n} {p:.0f}%" for n, p in top))
            lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--rates", default="1000,2000,5000,10000,20000",
                    type=lambda s: [int(x) for x in s.split(",") if x.strip()])
    ap.add_argument("--duration-s", type=float, default=5.0, help="of each open-loop phase")
    ap.add_argument("--rtt", type=int, default=2000, help="commands one at a time")
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--idle-s", type=float, default=10.0, help="idle CPU window (client connected, sending nothing)")
    ap.add_argument("--drain-s", type=float, default=60.0, help="wait for answers after an open-loop phase")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--systems", default="ours,floor")
    ap.add_argument("--variant", action="append", default=None,
                    help="NAME[:key=value,...], repeatable: ClusterLayout fields, jar=PATH (both systems run that "
                         "jar: a Java change against the jar before it), client_park_us (the floor's client), "
                         "client_NAME=value (MatchClient(NAME=value), e.g. client_direct_send=1), gc_freeze=1 "
                         "(our client freezes its objects before the phases)")
    ap.add_argument("--relaxed-timeouts", action="store_true",
                    help="heartbeat 100/2000 ms, election 300 ms for both systems (a heavily loaded machine)")
    ap.add_argument("--binary", action="store_true", help="our client sends the binary codec instead of JSON")
    ap.add_argument("--floor-size", type=int, default=128, help="bytes of each floor message")
    ap.add_argument("--port-start", type=int, default=27000)
    ap.add_argument("--client-timeout-s", type=float, default=900)
    ap.add_argument("--report", type=Path, default=Path(__file__).parent / "reports" / "latency.md")
    ap.add_argument("--keep", type=Path, help="copy each run's latencies, member logs, snapshot and client GC "
                    "events here (bench/tail_timeline.py reads them)")
    args = ap.parse_args(argv)
    if args.worker:
        return ours_worker(json.loads(args.worker))
    args.argv = sys.argv[1:] if argv is None else argv
    # SIGTERM runs the cleanup (finally blocks) too: members, /dev/shm, temporary directories
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(level=logging.WARNING)
    variants = [parse_variant(v) for v in (args.variant or ["default"])]
    systems = [s.strip() for s in args.systems.split(",")]
    jar = pin_jar()
    env, started = environment(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    totals: dict[tuple[str, str, str], Totals] = {}
    port_base = free_port_base(args.port_start)
    failures: list[str] = []
    with MachineLoad() as load:
        for rnd in range(args.rounds):
            for vname, kw in variants:
                order = systems if rnd % 2 == 0 else systems[::-1]
                for system in order:
                    layout_kw = {k: v for k, v in kw.items()
                                 if not k.startswith("client_") and k not in ("jar", "gc_freeze")}
                    variant_jar = Path(kw.get("jar", jar))
                    os.environ["MATCHX_JAR"] = str(variant_jar)  # our members and client inherit it
                    with tempfile.TemporaryDirectory(prefix=f"matchx-lat-{system}-") as tmp:
                        if args.relaxed_timeouts:
                            layout_kw.setdefault("timeouts", RELAXED_TIMEOUTS)
                        layout = ClusterLayout(base_dir=Path(tmp), port_base=port_base, **layout_kw)
                        deadline = time.monotonic() + 60
                        while not ports_free("127.0.0.1", range(port_base, port_base + 3 * PORTS_PER_MEMBER)):
                            if time.monotonic() > deadline:
                                raise RuntimeError(f"ports from {port_base} still taken")
                            time.sleep(0.5)
                        out = Path(tmp) / "lat"
                        out.mkdir()
                        log(f"round {rnd + 1}/{args.rounds} variant {vname}: {system} "
                            f"(load {os.getloadavg()[0]:.1f})")
                        try:
                            if system == "ours":
                                client_kw = {k[len("client_"):]: v for k, v in kw.items()
                                             if k.startswith("client_") and k != "client_park_us"}
                                results = run_ours(args, layout, out, client_kw, bool(kw.get("gc_freeze")))
                            else:
                                results = run_floor(args, layout, out, variant_jar,
                                                    kw.get("client_park_us", SDK_PARK_US))
                        except (RuntimeError, OSError) as exc:
                            # one failed start must not lose the other systems' figures; the
                            # report shows the hole
                            log(f"  {system} failed: {exc}")
                            failures.append(f"round {rnd + 1} {vname} {system}: {str(exc)[:300]}")
                            continue
                        if args.keep:
                            shutil.copytree(tmp, args.keep / f"r{rnd + 1}-{vname}-{system}",
                                            ignore=keep_only_text,
                                            dirs_exist_ok=True)
                    for phase, r in results.items():
                        totals.setdefault((vname, system, phase), Totals()).add(r)
    text = report(args, totals, variants, env, load.summary(), started)
    if failures:
        text += "\nFailed runs (left out above):\n\n" + "".join(f"- {f}\n" for f in failures)
    return publish_report(args.report, text)


if __name__ == "__main__":
    sys.exit(main())
