"""Cost of token verification and per-command authorisation (pyengine.service.tokens).

    .venv/bin/python bench/auth_bench.py [--iterations 20000] [--out bench/reports/auth.md]

Per-call latencies are measured with ``time.perf_counter_ns`` around each call for the
expensive operations (signature verification, minting). Operations well below a microsecond
(check_command, Principal decoding, revocation lookup) are timed in batches of ``--batch``
calls and reported per call (batch time / batch size), so the timer's own cost does not
dominate. Median and p99 over all samples; a GC collection is forced before each series and GC
is disabled while measuring.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nacl
import nacl.bindings
import nacl.signing

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pyengine.service.tokens import (  # noqa: E402
    Principal,
    RevocationList,
    TokenError,
    TokenSigner,
    b64url_decode,
    check_command,
)

NS = 1_000_000_000


def pct(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    i = min(len(sorted_vals) - 1, max(0, round(q / 100 * (len(sorted_vals) - 1))))
    return sorted_vals[i]


def measure_each(fn: Callable[[], object], n: int) -> list[float]:
    """Per-call latency in microseconds."""
    for _ in range(min(200, n)):
        fn()
    gc.collect()
    gc.disable()
    try:
        out = []
        clock = time.perf_counter_ns
        for _ in range(n):
            t0 = clock()
            fn()
            out.append((clock() - t0) / 1000)
        return out
    finally:
        gc.enable()


def measure_batched(fn: Callable[[], object], n: int, batch: int) -> list[float]:
    """Per-call latency in microseconds, from batches of ``batch`` calls."""
    for _ in range(min(200, n)):
        fn()
    gc.collect()
    gc.disable()
    try:
        out = []
        clock = time.perf_counter_ns
        rng = range(batch)
        for _ in range(max(1, n // batch)):
            t0 = clock()
            for _ in rng:
                fn()
            out.append((clock() - t0) / 1000 / batch)
        return out
    finally:
        gc.enable()


def summarise(name: str, samples: list[float], how: str) -> dict:
    s = sorted(samples)
    return {
        "name": name,
        "how": how,
        "n": len(s),
        "median": statistics.median(s),
        "p99": pct(s, 99),
        "mean": statistics.fmean(s),
        "min": s[0],
    }


def expect_reject(v, tok: str, reason: str) -> Callable[[], None]:
    def run() -> None:
        try:
            v.verify(tok)
        except TokenError as e:
            if e.reason != reason:
                raise
        else:
            raise AssertionError("token accepted")

    return run


def run(iterations: int, batch: int, rounds: int = 5) -> tuple[list[dict], dict]:
    signer = TokenSigner.generate("bench-key-1")
    other = TokenSigner.generate("bench-key-2")
    verifier = signer.verifier()
    verifier.add_key(other.kid, other.public_key)
    now = int(time.time())
    token = signer.mint("u-3f2a9c0d11e4b7a8", "acc-7c1e22aa90fd", ["trade", "read"],
                        ttl_s=900, now_s=now)  # fmt: skip
    principal = verifier.verify(token, now_s=now)
    encoded = principal.to_bytes()
    now_ns = now * NS + 1

    h, p, s = token.split(".")
    signing_input = f"{h}.{p}".encode()
    sig = b64url_decode(s)
    vk = nacl.signing.VerifyKey(signer.public_key)
    pk = signer.public_key

    revs = RevocationList()
    revs.apply(1, [(f"jti-{i:08d}", now + 900) for i in range(10_000)])

    bad_sig = f"{h}.{p}.{s[:-4]}AAAA"
    alg_none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0." + p + "."

    # (name, fn, batched?) -- cheap operations are timed in batches
    ops: list[tuple[str, Callable[[], object], bool]] = [
        ("libsodium Ed25519 verify (nacl.bindings, baseline)",
         lambda: nacl.bindings.crypto_sign_open(sig + signing_input, pk), False),
        ("PyNaCl VerifyKey.verify (baseline)", lambda: vk.verify(signing_input, sig), False),
        ("TokenVerifier.verify(token)", lambda: verifier.verify(token), False),
        ("TokenVerifier.verify(token, now_s)", lambda: verifier.verify(token, now_s=now), False),
        ("reject: bad signature", expect_reject(verifier, bad_sig, "bad_signature"), False),
        ("reject: alg none", expect_reject(verifier, alg_none, "alg_not_allowed"), False),
        ("TokenSigner.mint (auth service)",
         lambda: signer.mint("u1", "acc1", ["trade"], ttl_s=900, now_s=now), False),
        ("check_command(principal, now_ns, 'trade', acct)",
         lambda: check_command(principal, now_ns, "trade", principal.account), True),
        ("check_command(..., revocations=10k jtis)",
         lambda: check_command(principal, now_ns, "trade", principal.account, revs), True),
        ("Principal.from_bytes (encodedPrincipal)", lambda: Principal.from_bytes(encoded), True),
        ("Principal.to_bytes", principal.to_bytes, True),
        ("empty lambda (harness floor)", lambda: None, True),
    ]  # fmt: skip
    # Interleave: every series runs in `rounds` slices, round-robin, so that background load
    # on a shared machine hits all of them alike.
    samples: dict[str, list[float]] = {name: [] for name, _, _ in ops}
    per_round = max(1, iterations // rounds)
    for _ in range(rounds):
        for name, fn, is_batched in ops:
            if is_batched:
                samples[name] += measure_batched(fn, per_round * 10, batch)
            else:
                samples[name] += measure_each(fn, per_round)
    results = [
        summarise(name, samples[name], f"batches of {batch}" if is_batched else "per call")
        for name, _, is_batched in ops
    ]

    env = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "pynacl": nacl.__version__,
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "cpus": os.cpu_count(),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "token_bytes": len(token),
        "principal_bytes": len(encoded),
        "iterations": iterations,
        "rounds": rounds,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    return results, env


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def render(results: list[dict], env: dict) -> str:
    lines = [
        "# Auth bench: token verification and per-command authorisation",
        "",
        "Generated by `bench/auth_bench.py` (do not edit by hand). Latencies in microseconds.",
        "",
        "| operation | timing | samples | median µs | p99 µs | mean µs |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['name']} | {r['how']} | {r['n']} | {r['median']:.3f} | {r['p99']:.3f} | {r['mean']:.3f} |")
    by = {r["name"]: r for r in results}
    verify = by["TokenVerifier.verify(token, now_s)"]["median"]
    raw = by["PyNaCl VerifyKey.verify (baseline)"]["median"]
    cc = by["check_command(principal, now_ns, 'trade', acct)"]["median"]
    ccr = by["check_command(..., revocations=10k jtis)"]["median"]
    none = by["reject: alg none"]["median"]
    rest = verify - raw
    lines += [
        "",
        "## Reading",
        "",
        f"- Full token verification costs {verify:.1f} µs median; the bare Ed25519 check through "
        f"PyNaCl is {raw:.1f} µs, so parsing, strict base64url/JSON and claim validation add "
        f"{rest:+.1f} µs. Verification happens once per session (at session open), not per command.",
        f"- The per-command check (`check_command`: exp/nbf against cluster time, account, "
        f"permission) costs {cc:.3f} µs median (about {1 / cc:.1f} M checks/s on one core); with "
        f"a 10k-entry revocation set it is {ccr:.3f} µs (one dict probe more).",
        f"- `alg: none` is refused in {none:.1f} µs without touching the signature code; a bad "
        "signature costs a full verification.",
        "- p99 on this shared 2-vCPU VM reflects preemption by other processes as much as the code; compare medians.",
        "",
        "## Environment",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in env.items()]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved slices per series")
    ap.add_argument("--out", default=str(ROOT / "bench" / "reports" / "auth.md"))
    args = ap.parse_args(argv)
    results, env = run(args.iterations, args.batch, args.rounds)
    text = render(results, env)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
