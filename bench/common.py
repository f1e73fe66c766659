"""Helpers shared by the cluster benchmarks (cluster_throughput, failover_under_load,
snapshot_recovery): a private copy of the cluster jar, a 3-member cluster on loopback in a
bench-only port range, a seeded order flow with funded accounts, /proc CPU accounting per
process and per thread, and HdrHistogram helpers.

Nothing here changes library code; the benches only use the public pieces of ``pyengine``
(LocalCluster, ClusterLayout, MatchClient) plus the engine codec.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pyengine.node.localcluster import LocalCluster, free_port_base  # noqa: E402
from pyengine.node.settings import ClusterLayout, Timeouts  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
MID = 10_000  # ticks; tick 0.01 -> price 100.00
SYMBOLS = ("BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD")
SYMBOL_WEIGHTS = (0.4, 0.3, 0.2, 0.1)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------- the jar


def pin_jar() -> Path:
    """Copies the cluster jar to a private place and points MATCHX_JAR (inherited by the
    member processes) at it, so a rebuild of java-cluster/target by someone else during a long
    run cannot change or break the members under test."""
    if os.environ.get("MATCHX_JAR") and Path(os.environ["MATCHX_JAR"]).is_file():
        return Path(os.environ["MATCHX_JAR"])
    from pyengine import jvm

    src = jvm.find_jar()
    dst_dir = Path(tempfile.gettempdir()) / f"matchx-bench-jar-{os.getpid()}"
    dst_dir.mkdir(parents=True, exist_ok=True)
    dst = dst_dir / src.name
    shutil.copy2(src, dst)
    os.environ["MATCHX_JAR"] = str(dst)
    # the class data sharing archive fits one jar path: make one for the copy (members start
    # without it, only slower, when that fails)
    if jvm.cds_archive(src).is_file():
        try:
            from pyengine.ops import build_cds

            build_cds.build(dst, build_cds.CLASSLIST)
        except (SystemExit, OSError) as exc:
            print(f"pin_jar: no class data sharing archive for the copied jar: {exc}", file=sys.stderr)
    import atexit

    atexit.register(jar_cleanup)
    return dst


def jar_cleanup() -> None:
    d = Path(tempfile.gettempdir()) / f"matchx-bench-jar-{os.getpid()}"
    shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------------- the cluster


@contextmanager
def bench_cluster(prefix: str, port_start: int, *, timeouts: Timeouts | None = None,
                  term_length: int = 1 << 20, keep_dir: Path | None = None, log_level: str = "WARNING",
                  **layout_kw):
    """A started 3-member LocalCluster with a leader and two followers; stopped (processes and
    /dev/shm) on exit, its directory removed unless ``keep_dir`` was given."""
    pin_jar()
    tmp = keep_dir or Path(tempfile.mkdtemp(prefix=f"matchx-{prefix}-"))
    layout = ClusterLayout(base_dir=tmp, port_base=free_port_base(port_start),
                           timeouts=timeouts or Timeouts(), term_length=term_length, **layout_kw)
    cluster = LocalCluster(layout, log_level=log_level)
    try:
        cluster.start()
        cluster.await_leader(90)
        cluster.await_followers(2, 90)
        yield cluster
    finally:
        cluster.stop()
        if keep_dir is None:
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------- CPU from /proc


def proc_cpu(pid: int) -> float:
    """utime+stime of a process in seconds (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def task_files(pid: int, *names: str) -> dict[int, tuple[str, ...]]:
    """tid -> the text of /proc/PID/task/TID/NAME for each of ``names``, for every thread of
    ``pid`` still there when read (empty when the process is gone)."""
    out: dict[int, tuple[str, ...]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            out[int(tid)] = tuple(Path(f"/proc/{pid}/task/{tid}/{n}").read_text() for n in names)
        except OSError:
            continue
    return out


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (threads of the same name summed). The JVM names its
    threads (Aeron agents, GC, JIT); the Python interpreter threads show as the process name."""
    out: dict[str, float] = {}
    for (text,) in task_files(pid, "stat").values():
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICKS
    return out


class CpuMeter:
    """CPU used by a set of processes (and their threads) between start() and stop()."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.t0 = 0.0
        self.elapsed = 0.0
        self.before: dict[str, dict[str, float]] = {}
        self.used: dict[str, dict[str, float]] = {}

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.before = {k: thread_cpu(p) for k, p in self.pids.items()}

    def stop(self) -> None:
        self.elapsed = time.monotonic() - self.t0
        for k, p in self.pids.items():
            now = thread_cpu(p)
            b = self.before.get(k, {})
            self.used[k] = {n: now[n] - b.get(n, 0.0) for n in now if now[n] - b.get(n, 0.0) > 0}

    def percent(self) -> dict[str, float]:
        """% of one core per process."""
        return {k: 100 * sum(v.values()) / self.elapsed for k, v in self.used.items()}

    def top_threads(self, key: str, n: int = 6) -> list[tuple[str, float]]:
        items = sorted(self.used.get(key, {}).items(), key=lambda kv: -kv[1])[:n]
        return [(name, 100 * s / self.elapsed) for name, s in items]


# ---------------------------------------------------------------------------- order flow


def setup_commands(accounts: int, symbols: tuple[str, ...] = SYMBOLS, prefix: str = "a") -> list[dict]:
    """add_symbol for each symbol (tick 0.01, lot 0.001, small fees) and a generous deposit of
    USD and of every base asset for every account."""
    cmds: list[dict] = []
    for s in symbols:
        base, quote = s.split("-")
        cmds.append({"op": "add_symbol", "symbol": s, "base": base, "quote": quote,
                     "tick_size": "0.01", "lot_size": "0.001", "maker_fee_bps": 1, "taker_fee_bps": 2})
    for a in range(accounts):
        name = f"{prefix}{a}"
        cmds.append({"op": "deposit", "account": name, "asset": "USD", "amount": "100000000000",
                     "tx_id": f"{name}-USD"})
        for s in symbols:
            base = s.split("-")[0]
            cmds.append({"op": "deposit", "account": name, "asset": base, "amount": "1000000000",
                         "tx_id": f"{name}-{base}"})
    return cmds


class OrderFlow:
    """A seeded, open-loop order stream on a few symbols (weights 40/30/20/10 %).

    It cannot see the engine's answers, so cancels and amends name orders by
    client_order_id; an order that has already filled makes such a cancel an engine reject
    (``unknown_order``), as on a real venue. Mix (of commands):

    * 50 % passive GTC limit (1 + Exp(mean 10) ticks behind the mid, 1..200 lots, some larger)
    * 8 % aggressive GTC limit (crosses the mid by 0..5 ticks: trades, rests the rest)
    * 7 % IOC limit crossing the mid by 0..8 ticks (trades or is cancelled)
    * 28 % cancel of one of the account's earlier orders on that symbol (by client_order_id)
    * 7 % amend (price move) of an earlier order (by client_order_id)

    A book holds about ``target_per_symbol`` live orders: above that, new orders turn into
    cancels. The mid of each symbol drifts by one tick now and then.
    """

    def __init__(self, seed: int, accounts: int, tag: str, symbols: tuple[str, ...] = SYMBOLS,
                 weights: tuple[float, ...] = SYMBOL_WEIGHTS, target_per_symbol: int = 2000,
                 prefix: str = "a") -> None:
        self.rnd = random.Random(seed)
        self.accounts = [f"{prefix}{i}" for i in range(accounts)]
        self.tag = tag
        self.symbols = symbols
        self.cum = []
        acc = 0.0
        for w in weights:
            acc += w
            self.cum.append(acc)
        self.mid = [MID] * len(symbols)
        self.live: list[deque] = [deque() for _ in symbols]  # (coid, account)
        self.target = target_per_symbol
        self.n = 0
        self.pstr: dict[int, str] = {}
        self.qstr = [f"{q / 1000:.3f}".rstrip("0").rstrip(".") for q in range(0, 1001)]
        self.kinds: dict[str, int] = {}

    def _sym(self) -> int:
        r = self.rnd.random()
        for i, c in enumerate(self.cum):
            if r < c:
                return i
        return len(self.cum) - 1

    def price(self, t: int) -> str:
        s = self.pstr.get(t)
        if s is None:
            s = self.pstr[t] = f"{t // 100}.{t % 100:02d}"
        return s

    def next(self) -> dict:
        rnd = self.rnd
        s = self._sym()
        if rnd.random() < 0.01:
            self.mid[s] += rnd.choice((-1, 1))
        live = self.live[s]
        r = rnd.random()
        if r < 0.50:
            kind = "passive"
        elif r < 0.58:
            kind = "aggressive"
        elif r < 0.65:
            kind = "ioc"
        elif r < 0.93:
            kind = "cancel"
        else:
            kind = "amend"
        if kind in ("cancel", "amend") and len(live) < 16:
            kind = "passive"
        elif kind in ("passive", "aggressive") and len(live) > self.target:
            kind = "cancel"
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        sym = self.symbols[s]
        if kind in ("cancel", "amend"):
            # mostly recent orders (a quoting bot), sometimes an old one
            i = len(live) - 1 - min(int(rnd.expovariate(1 / 30)), len(live) - 1)
            coid, acct = live[i]
            if kind == "cancel":
                del live[i]
                return {"op": "cancel", "account": acct, "symbol": sym, "client_order_id": coid}
            buy = coid[-1] == "b"
            p = self.mid[s] - 1 - int(rnd.expovariate(1 / 10)) if buy else self.mid[s] + 1 + int(
                rnd.expovariate(1 / 10))
            return {"op": "amend", "account": acct, "symbol": sym, "client_order_id": coid,
                    "price": self.price(p)}
        buy = rnd.random() < 0.5
        self.n += 1
        coid = f"{self.tag}{self.n}{'b' if buy else 's'}"
        acct = self.accounts[rnd.randrange(len(self.accounts))]
        q = rnd.randint(1, 200) if rnd.random() < 0.9 else rnd.randint(200, 1000)
        mid = self.mid[s]
        if kind == "passive":
            off = 1 + int(rnd.expovariate(1 / 10))
            p = mid - off if buy else mid + off
        else:
            off = rnd.randint(0, 5 if kind == "aggressive" else 8)
            p = mid + off if buy else mid - off
        cmd = {"op": "place", "account": acct, "symbol": sym, "side": "buy" if buy else "sell",
               "price": self.price(p), "qty": self.qstr[q], "client_order_id": coid}
        if kind == "ioc":
            cmd["tif"] = "IOC"
        else:
            live.append((coid, acct))
        return cmd

    def take(self, n: int) -> list[dict]:
        return [self.next() for _ in range(n)]


def bulk_ops(cmds: list[dict], coid_numbers: dict[str, int], base: int = 0) -> list[tuple]:
    """OrderFlow commands in ticks and lots for bulks (bench/cluster_throughput.py --api bulk):
    ("p", account, symbol, side, price, qty, client_order_id, tif) / ("c", account, symbol,
    client_order_id) / ("a", account, symbol, client_order_id, price). The flow's string ids
    become numbers from ``base`` + 1 on (``coid_numbers`` keeps the mapping across calls; give
    every flow of a run its own ``base``, or its ids repeat another's and answer duplicate)."""
    out: list[tuple] = []
    for c in cmds:
        coid = coid_numbers.get(c["client_order_id"])
        if coid is None:
            coid = coid_numbers[c["client_order_id"]] = base + len(coid_numbers) + 1
        op = c["op"]
        if op == "place":
            out.append(("p", c["account"], c["symbol"], c["side"], int(c["price"].replace(".", "")),
                        round(float(c["qty"]) * 1000), coid, c.get("tif", "GTC")))
        elif op == "cancel":
            out.append(("c", c["account"], c["symbol"], coid))
        else:
            out.append(("a", c["account"], c["symbol"], coid, int(c["price"].replace(".", ""))))
    return out


def build_bulk(ops: list[tuple]):
    """A BulkBuilder of ``bulk_ops`` tuples."""
    from pyengine.wire.bulk import BulkBuilder

    b = BulkBuilder()
    place, cancel, amend = b.place, b.cancel, b.amend
    for o in ops:
        k = o[0]
        if k == "p":
            place(o[1], o[2], o[3], o[4], o[5], client_order_id=o[6], tif=o[7])
        elif k == "c":
            cancel(o[1], o[2], client_order_id=o[3])
        else:
            amend(o[1], o[2], client_order_id=o[3], price=o[4])
    return b


# ---------------------------------------------------------------------------- histograms


def new_histogram():
    from hdrh.histogram import HdrHistogram

    return HdrHistogram(1, 600_000_000, 3)  # microseconds, 1 us .. 10 min


def pct_ms(h, p: float) -> float:
    return h.get_value_at_percentile(p) / 1000.0


def hist_summary(h) -> dict:
    if h.get_total_count() == 0:
        return {"count": 0}
    return {"count": h.get_total_count(), "p50_ms": pct_ms(h, 50), "p90_ms": pct_ms(h, 90),
            "p99_ms": pct_ms(h, 99), "p999_ms": pct_ms(h, 99.9), "max_ms": h.get_max_value() / 1000.0,
            "mean_ms": h.get_mean_value() / 1000.0}


def environment() -> str:
    import platform

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (f"{os.cpu_count()} vCPU ({cpu}), Python {platform.python_version()}, "
            f"load average before the run {os.getloadavg()[0]:.2f}, {when}")


def publish_report(path: Path, text: str) -> int:
    """Writes a bench's report (making its directory) and prints it; the bench's exit code."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)
    return 0


def parse_variant(text: str) -> tuple[str, dict]:
    """A bench's ``--variant``: ``NAME`` or ``NAME:key=value,key=value`` (integers where they
    look like one); which keys a bench takes is its own."""
    name, _, rest = text.partition(":")
    kw: dict = {}
    for item in filter(None, rest.split(",")):
        k, _, v = item.partition("=")
        kw[k.strip()] = int(v) if v.strip().lstrip("-").isdigit() else v.strip()
    return name, kw


# ---------------------------------------------------------------------------- worker processes


def spawn_worker(script: str, spec: dict):
    """Runs ``python script --worker JSON`` (a client in its own process: its own JVM)."""
    import json
    import subprocess

    return subprocess.Popen([sys.executable, script, "--worker", json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)


def worker_result(proc, timeout: float, echo: bool = True) -> dict:
    """Streams the worker's output (echoing PROGRESS lines) until its RESULT line."""
    import json
    import threading

    lines: list[str] = []
    result: list[dict] = []

    def pump() -> None:
        for line in proc.stdout:
            if line.startswith("RESULT "):
                result.append(json.loads(line[7:]))
            else:
                lines.append(line)
                if echo and line.startswith("PROGRESS "):
                    log(line[9:].rstrip())

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    try:
        proc.wait(timeout)
    except Exception:
        proc.kill()
        proc.wait()
    t.join(5)
    if not result:
        raise RuntimeError(f"worker {proc.pid} failed (rc {proc.returncode}):\n" + "".join(lines[-40:]))
    return result[0]


def emit(kind: str, payload) -> None:
    import json

    if kind == "RESULT":
        sys.stdout.write("RESULT " + json.dumps(payload) + "\n")
    else:
        sys.stdout.write(f"PROGRESS {payload}\n")
    sys.stdout.flush()


class MachineLoad:
    """Samples the machine while a bench runs: 1-minute load average and CPU busy (all
    processes, ours and everybody else's), so a report says how contended the machine was."""

    def __init__(self, interval: float = 1.0) -> None:
        import threading

        self.interval = interval
        self.loads: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = self._stat()

    @staticmethod
    def _stat() -> tuple[int, int]:
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = f[3] + f[4]
        return sum(f) - idle, sum(f)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.loads.append(os.getloadavg()[0])

    def __enter__(self) -> MachineLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(2)
        t1 = self._stat()
        self.busy = 100 * (t1[0] - self._t0[0]) / max(1, t1[1] - self._t0[1])

    def summary(self) -> str:
        mean = sum(self.loads) / len(self.loads) if self.loads else os.getloadavg()[0]
        peak = max(self.loads) if self.loads else mean
        return (f"machine during the run: load average mean {mean:.1f} (peak {peak:.1f}) on {os.cpu_count()} "
                f"cores, CPU busy {getattr(self, 'busy', float('nan')):.0f}% (all processes, this bench's and "
                f"everybody else's)")
