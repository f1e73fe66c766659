"""Client SDK for a partitioned system: routes every command to the partition that owns its symbol.

    with RoutedClient("http://127.0.0.1:8700") as c:
        c.request({"op": "deposit", "account": "alice", "asset": "USDT", "amount": "1000", "tx_id": "d1"},
                  symbol="BTC-USDT")                    # no symbol in the command: say where
        c.request({"op": "place", "symbol": "BTC-USDT", ...})   # routed by its symbol
        fut = c.submit({"op": "place", "symbol": "SOL-USDT", ...})

All routing lives in this module (as in redis-py's cluster client); ``MatchClient`` keeps doing
one partition, failovers and resends. The loop:

1. ``RouteCache.lookup(symbol)`` gives the owning partition and its ingress endpoints (from the
   cache; the coordinator is asked only for a symbol it has not seen yet).
2. The command goes to that partition's ``MatchClient`` (one per partition, made on first use).
3. A member that does not own the symbol (any more) answers MOVED with the symbol's new epoch:
   ``RouteCache.invalidate(symbol, epoch)`` refreshes the map until it is at least that new, and
   the command is sent again to the new owner; at most ``max_moved_retries`` times. The caller
   only sees the final answer. A MOVED command had no effect, so sending it again is safe.

4. A partition that does not answer at all cannot say MOVED: e.g. it was retired after its
   symbols moved (``matchctl partition move``/``remove``), so no member is left. A command routed
   by its symbol whose partition's client has not been connected for ``min(1 s,
   reroute_after)``, or that has waited ``reroute_after`` seconds (default 5) for an answer, makes
   the client refresh the map: if the symbol's owner is now another partition (or the same
   partition at other endpoints), the command is taken back from the old partition's client
   (never sent there again) and sent to the owner (a place resent with its client_order_id
   answers as a duplicate if it was applied before the move); a symbol gone from the map raises
   ``UnknownSymbol``, a partition gone from the map ``UnknownPartition``. A retired partition's
   client is closed. While the map still names the silent partition the command keeps waiting
   for it (a failover; the caller's ``request`` timeout bounds the wait).

The coordinator is never on the order path: while it is down, the cached map keeps being used.

Commands without a symbol (``deposit``, ``withdraw``, ``balances``, ``cancel`` by order id) need
``partition=`` or ``symbol=`` to choose a partition. **Balances are per partition**: funds
deposited in one partition can only be used for the symbols that partition owns, and
``balances`` shows one partition's view. Deposit where you trade (``symbol=``). With ``symbol=``,
``deposit``/``withdraw``/``balances`` carry the symbol in the command (the engine ignores it
there), so the partition checks that it owns the symbol and a stale map is corrected by MOVED
for them too instead of crediting a partition that no longer trades the symbol.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from pyengine.client.market import Callback, Subscription
from pyengine.client.match_client import ClientError, MatchClient, MovedError, Reply
from pyengine.client.routing import (
    CoordinatorUnavailable,
    Route,
    RouteCache,
    RoutingError,
    StaleRoute,
    UnknownSymbol,
)

log = logging.getLogger("matchx.routed_client")

# Ops that ignore a "symbol" field: routing them with symbol= adds it, so the owner check applies.
_SYMBOL_CHECKED_OPS = frozenset({"deposit", "withdraw", "balances"})
# Ops whose second application changes nothing: a reroute may send them to a new owner even if
# the old partition applied them (resend_safe_elsewhere).
_RESEND_SAFE_OPS = frozenset({"cancel", "cancel_all", "book", "order", "balances", "open_orders", "fills", "trades"})

__all__ = ["RoutedClient", "RoutedStats", "UnknownSymbol", "CoordinatorUnavailable", "RoutingError",
           "UnknownPartition", "MoveTimeout"]


class MoveTimeout(MovedError):
    """A command kept being answered MOVED for longer than ``moved_timeout``: its symbol is moving
    and the move neither finished nor was rolled back in time (or the map is stuck)."""

    def __init__(self, symbol: str, epoch: int, waited: float) -> None:
        super().__init__(symbol, epoch)
        self.args = (f"{symbol} is moving between partitions: no owner took the command within "
                     f"{waited:.1f} s (migration stuck or aborted; the command had no effect)",)
        self.waited = waited


class OutcomeUnknown(ClientError):
    """A command that is not safe to apply twice went to a partition that neither answered nor
    can be reached now, and the map names another owner: it may have been applied there, so it
    was not sent to the new owner. Check (e.g. ``balances`` with ``partition=``) before sending
    it again."""

    def __init__(self, command: dict, symbol: str, old: str, new: str | None) -> None:
        where = f"the map names {new} now" if new else f"{symbol} is no longer in the map"
        super().__init__(
            f"{command.get('op')} for {symbol}: partition {old} received it but never answered and "
            f"cannot be reached, and {where}; it may have been applied at {old}, so it was not sent "
            "again elsewhere: check the outcome there before resending")
        self.command, self.symbol, self.old_partition, self.new_partition = command, symbol, old, new


def resend_safe_elsewhere(command: dict) -> bool:
    """Whether ``command``, possibly applied by a partition that has since lost its symbol, may
    be sent to the symbol's new owner: a place with a client_order_id (its idempotency state moves
    with the symbol: a second one answers as a duplicate), a cancel (its effect cannot repeat),
    a read. A place without a client_order_id, an amend, a deposit or a withdrawal could take
    effect twice."""
    op = command.get("op")
    if op == "place":
        return bool(command.get("client_order_id"))
    return op in _RESEND_SAFE_OPS


class UnknownPartition(RoutingError):
    """No ingress endpoints are known for this partition (not in the cached map, not at the coordinator)."""


@dataclass
class RoutedStats:
    moved: int = 0  # MOVED answers handled (each one a resend to the new owner)
    clients: int = 0  # MatchClients created (one per partition used)
    rerouted: int = 0  # commands taken back from a silent partition and sent to the symbol's new owner
    retired: int = 0  # MatchClients closed because their partition left the map


@dataclass(eq=False)
class _Routed:
    """A command routed by its symbol, waiting for its partition's answer (see ``_watch``)."""

    outer: Future
    command: dict
    symbol: str
    target: str
    client: MatchClient
    inner: Future
    attempt: int
    since: float | None
    endpoints: str  # the endpoints ``client`` connects to
    checked: float = field(default_factory=time.monotonic)  # sent, or the route last checked
    settled: bool = False  # answered, or taken back and sent elsewhere (under RoutedClient._lock)


class RoutedClient:
    """Sends commands to the partition that owns their symbol; thread-safe.

    ``coordinator_url``: the coordinator's base URL. ``max_moved_retries``: how many MOVED answers
    one command may get before the last one is raised as ``MovedError``; while a symbol moves
    (freeze-sync-switch, docs/migration.md) its commands are answered MOVED until the new owner
    takes over, so they are sent again for up to ``moved_timeout`` seconds whatever the count,
    then ``MoveTimeout`` is raised (the command had no effect). ``reroute_after``: seconds a
    command routed by its symbol waits for an answer (1 s at most while its partition's client
    is not connected) before the map is refreshed and the command, if its symbol has another
    owner now, sent there (a partition that no longer exists cannot answer MOVED; module
    docstring, point 4). ``route_cache``: a
    ``RouteCache`` to use (otherwise one is made with ``cache_options``). Other keyword arguments go
    to every ``MatchClient`` (``credentials``, ``client_id``, timeouts, ...).
    """

    def __init__(
        self,
        coordinator_url: str,
        *,
        max_moved_retries: int = 5,
        moved_timeout: float = 10.0,
        reroute_after: float = 5.0,
        route_cache: RouteCache | None = None,
        cache_options: dict[str, Any] | None = None,
        trace: Callable[[str, str, str], None] | None = None,
        **client_kwargs: Any,
    ) -> None:
        self.coordinator_url = coordinator_url.rstrip("/")
        # diagnostics of a move, called on the routing thread: ("moving" | "not_yet" | "moved",
        # symbol, partition that answered) and ("route", symbol, partition the map names, to which
        # the command is sent again); bench/migration.py times the client's side of a pause with it
        self.trace = trace
        self.max_moved_retries = max_moved_retries
        self.moved_timeout = moved_timeout
        if reroute_after <= 0:
            raise ValueError("reroute_after must be > 0")
        self.reroute_after = reroute_after
        self._owns_cache = route_cache is None
        self.routes = route_cache if route_cache is not None else RouteCache(coordinator_url, **(cache_options or {}))
        self.client_kwargs = client_kwargs
        self.stats = RoutedStats()
        self._clients: dict[str, MatchClient] = {}
        self._endpoints: dict[str, str] = {}  # partition -> ingress endpoints, learned from routes
        self._client_endpoints: dict[str, str] = {}  # partition -> the endpoints its MatchClient uses
        self._lock = threading.Lock()
        # partitions whose client is being made ahead of a switch (set once it is made)
        self._warming: dict[str, threading.Event] = {}
        self._waiting: set[_Routed] = set()  # commands routed by symbol without an answer yet
        self._stop = threading.Event()
        # notices partitions that do not answer (retired, moved): see _watch
        self._watcher = threading.Thread(target=self._watch, name="matchx-route-watch", daemon=True)
        self._watcher.start()
        # MOVED answers arrive on a MatchClient's receiver thread; refreshing the map (HTTP) and
        # resending happen here instead, so a slow coordinator never stalls any client's replies.
        self._retry_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="matchx-route")
        self._closed = False
        # market data subscriptions, by symbol: registered with every partition's client, so the
        # updates reach them from whichever partition owns the symbol now
        self._subs: dict[str, Subscription] = {}

    # ---- public API ------------------------------------------------------------------------

    def submit(self, command: dict, *, partition: str | None = None, symbol: str | None = None) -> Future:
        """Queue ``command``; the future resolves to the owning partition's ``Reply``.

        The partition is ``partition`` if given, else the owner of ``symbol``, else the owner of
        ``command["symbol"]``. Routing errors (unknown symbol, coordinator unreachable with the
        symbol not cached) are raised here; MOVED answers are handled inside."""
        if self._closed:
            raise ClientError("client is closed")
        if not isinstance(command, dict):
            raise TypeError("a command is a dict with an 'op'")
        route_symbol = None
        if partition is None:
            route_symbol = symbol if symbol is not None else command.get("symbol")
            if not isinstance(route_symbol, str):
                raise ValueError(
                    f"command {command.get('op')!r} has no symbol: pass partition= or symbol= to choose a partition"
                )
            if "symbol" not in command and command.get("op") in _SYMBOL_CHECKED_OPS:
                command = {**command, "symbol": route_symbol}
        outer: Future = Future()
        self._send(outer, command, partition, route_symbol, attempt=0, raise_now=True)
        return outer

    def request(self, command: dict, timeout: float = 10.0, *, partition: str | None = None,
                symbol: str | None = None) -> Reply:
        return self.submit(command, partition=partition, symbol=symbol).result(timeout)

    def admin(self, command: dict, *, partition: str, timeout: float = 10.0) -> Reply:
        """An admin command (``{"op": "ping"}``, ``state_hash``, ...) to one partition."""
        return self.client(partition).admin(command, timeout)

    def balances(self, account: str, timeout: float = 10.0) -> dict:
        """``account``'s balances in every partition that has members, and their sum per asset:
        ``{"account", "total": {asset: {"available", "held"}}, "partitions": {partition: {asset:
        {"available", "held"}}}}`` (decimal strings). A partition that does not know the account
        is left out."""
        from decimal import Decimal

        try:
            with httpx.Client(timeout=self.routes.timeout) as http:
                resp = http.get(f"{self.coordinator_url}/v1/partitions")
                resp.raise_for_status()
                parts = [p["id"] for p in resp.json() if p.get("ingress_endpoints")]
        except httpx.HTTPError as exc:
            raise CoordinatorUnavailable(f"cannot list the partitions ({exc})") from exc
        per: dict[str, dict] = {}
        total: dict[str, list[Decimal]] = {}
        for p in sorted(parts):
            ev = self.request({"op": "balances", "account": account}, timeout, partition=p).events[0]
            if ev.get("type") != "balances":
                continue  # unknown_account there
            per[p] = ev["balances"]
            for asset, b in ev["balances"].items():
                t = total.setdefault(asset, [Decimal(0), Decimal(0)])
                t[0] += Decimal(b["available"])
                t[1] += Decimal(b["held"])
        return {"account": account, "partitions": per,
                "total": {a: {"available": str(v[0]), "held": str(v[1])} for a, v in sorted(total.items())}}

    def transfer(self, account: str, asset: str, amount: str, from_partition: str, to_partition: str,
                 transfer_id: str, timeout: float = 60.0) -> dict:
        """Move free funds of ``account`` between partitions through the coordinator, exactly once
        by ``transfer_id`` (calling again with the same id resumes or returns the first outcome).
        Returns the transfer's record once it is ``done``; raises ``ClientError`` if it was
        refused (nothing moved) or refunded (the destination refused the credit)."""
        body = {"id": transfer_id, "account": account, "asset": asset, "amount": amount,
                "from": from_partition, "to": to_partition}
        deadline = time.monotonic() + timeout
        try:
            with httpx.Client(base_url=self.coordinator_url, timeout=self.routes.timeout) as http:
                resp = http.post("/v1/transfers", json=body)
                if resp.status_code >= 400:
                    raise ClientError(f"transfer {transfer_id} refused: {resp.text[:300]}")
                while True:
                    rec = http.get(f"/v1/transfers/{transfer_id}").json()
                    if rec["state"] == "done":
                        return rec
                    if rec["state"] in ("refused", "refunded"):
                        raise ClientError(f"transfer {transfer_id} {rec['state']}: {rec.get('error')}")
                    if time.monotonic() > deadline:
                        raise ClientError(f"transfer {transfer_id} still {rec['state']} after {timeout:.0f} s "
                                          "(it carries on in the coordinator: call again with the same id)")
                    time.sleep(0.05)
        except httpx.HTTPError as exc:
            raise CoordinatorUnavailable(f"transfer {transfer_id}: coordinator unreachable ({exc}); call "
                                         "again with the same id") from exc

    def route(self, symbol: str) -> Route:
        """The cached route of ``symbol`` (asks the coordinator only if it is not cached)."""
        route = self.routes.lookup(symbol)
        self._endpoints[route.partition] = route.ingress_endpoints
        return route

    def client(self, partition: str) -> MatchClient:
        """The partition's ``MatchClient``, created on first use."""
        with self._lock:
            client = self._clients.get(partition)
            if client is not None:
                return client
            warming = self._warming.get(partition)
        if warming is not None:
            # a session being opened ahead of a switch (_warm): use it rather than open a second
            warming.wait(30.0)
        return self._make_client(partition)

    def _make_client(self, partition: str) -> MatchClient:
        with self._lock:
            client = self._clients.get(partition)
            if client is not None:
                return client
            if self._closed:
                raise ClientError("client is closed")
            endpoints = self._partition_endpoints(partition)
        # made outside the lock: setting a session up takes a while, and commands to the other
        # partitions must not wait for it (e.g. a migration's destination, made during the freeze)
        made: MatchClient | None = MatchClient(endpoints, **self.client_kwargs)
        with self._lock:
            client = self._clients.get(partition)
            if client is None and not self._closed:
                client, made = made, None
                client._subs.update(self._subs)
                self._clients[partition] = client
                self._client_endpoints[partition] = endpoints
                self.stats.clients += 1
                log.info("partition %s: client for %s", partition, endpoints)
        if made is not None:
            made.close()  # another thread made one first, or this client closed meanwhile
        if client is None:
            raise ClientError("client is closed")
        return client

    def subscribe(self, symbol: str, channels: list[str], callback: Callback, depth: int = 1000) -> Subscription:
        """``MatchClient.subscribe`` across partitions: the subscription goes to the symbol's
        owner, and when the symbol moves (a ``moved`` message, or MOVED answers) it subscribes
        at the new owner, where the sequence continues; re-syncs like ``MatchClient``'s."""

        def on(msg: dict) -> None:
            callback(msg)
            if msg.get("type") == "moved" and not self._closed:
                sub.closed = False
                sub.resync("moved")  # routed: the MOVED answer refreshes the map, then retries

        sub = Subscription(symbol, channels, on, self.submit, depth)
        with self._lock:
            old = self._subs.get(symbol)
            if old is not None:
                old.closed = True
            self._subs[symbol] = sub
            for c in self._clients.values():
                c._subs[symbol] = sub
        sub.resync("subscribe")
        return sub

    def clients(self) -> dict[str, MatchClient]:
        with self._lock:
            return dict(self._clients)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._watcher.join(10)
        self._retry_pool.shutdown(wait=True)
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            c.close()
        if self._owns_cache:
            self.routes.close()

    def __enter__(self) -> RoutedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- routing ---------------------------------------------------------------------------

    def _partition_endpoints(self, partition: str) -> str:
        for route in self.routes.routes().values():  # what the cached map says, no network
            self._endpoints[route.partition] = route.ingress_endpoints
        endpoints = self._endpoints.get(partition)
        if endpoints:
            return endpoints
        # A partition that owns no cached symbol: ask the coordinator for it once.
        try:
            with httpx.Client(timeout=self.routes.timeout) as http:
                resp = http.get(f"{self.coordinator_url}/v1/partitions/{partition}")
        except httpx.HTTPError as exc:
            raise CoordinatorUnavailable(
                f"partition {partition!r} is not cached and the coordinator is unreachable ({exc})"
            ) from exc
        if resp.status_code == 404:
            raise UnknownPartition(f"unknown partition {partition!r}")
        resp.raise_for_status()
        endpoints = resp.json().get("ingress_endpoints") or ""
        if not endpoints:
            raise UnknownPartition(f"partition {partition!r} has no members")
        self._endpoints[partition] = endpoints
        return endpoints

    def _send(self, outer: Future, command: dict, partition: str | None, symbol: str | None,
              attempt: int, raise_now: bool = False, since: float | None = None) -> None:
        try:
            target = partition if partition is not None else self.route(symbol).partition
            client = self.client(target)
            inner = client.submit(command)
        except Exception as exc:
            if raise_now:
                raise
            outer.set_exception(exc)
            return
        waiting = None
        if partition is None and symbol is not None:
            # watched until answered: its partition may never answer (_watch)
            waiting = _Routed(outer, command, symbol, target, client, inner, attempt, since,
                              self._client_endpoints.get(target, ""))
            with self._lock:
                self._waiting.add(waiting)
        inner.add_done_callback(
            lambda f: self._on_answer(f, outer, command, partition, symbol, target, attempt, since, waiting))

    def _on_answer(self, inner: Future, outer: Future, command: dict, partition: str | None,
                   symbol: str | None, target: str, attempt: int, since: float | None = None,
                   waiting: _Routed | None = None) -> None:
        if waiting is not None:
            with self._lock:
                if waiting.settled:
                    return  # taken back and sent to the new owner meanwhile (_reroute)
                waiting.settled = True
                self._waiting.discard(waiting)
        exc = inner.exception()
        if exc is None:
            outer.set_result(inner.result())
        elif isinstance(exc, MovedError) and partition is None and not self._closed:
            now = time.monotonic()
            since = now if since is None else since
            if attempt >= self.max_moved_retries and now - since >= self.moved_timeout:
                outer.set_exception(MoveTimeout(exc.symbol, exc.epoch, now - since))
                return
            self.stats.moved += 1
            try:
                self._retry_pool.submit(self._after_moved, exc, outer, command, symbol, target, attempt, since)
            except RuntimeError:  # closing
                outer.set_exception(exc)
        else:
            outer.set_exception(exc)

    def _watch(self) -> None:
        """Every 0.25 s: commands routed by symbol that waited too long for their partition (not
        connected for ``min(1 s, reroute_after)``, or no answer for ``reroute_after``) get their
        routes checked (``_reroute``). A partition that was retired never answers, not even MOVED."""
        while not self._stop.wait(0.25):
            now = time.monotonic()
            quick = min(1.0, self.reroute_after)
            with self._lock:
                due = [w for w in self._waiting if not w.settled
                       and now - w.checked >= (self.reroute_after if w.client.connected else quick)]
            if due:
                try:
                    self._reroute(due)
                except Exception:  # noqa: BLE001 - the watcher must keep watching
                    log.exception("checking the routes of unanswered commands failed")

    def _reroute(self, due: list[_Routed]) -> None:
        """Refresh the map; send each of ``due`` whose symbol has another owner now (or whose
        partition moved to other endpoints) there, taken back from the old partition's client;
        close the clients of partitions that have left the map or moved."""
        if not self.routes.refresh():
            now = time.monotonic()
            for w in due:
                w.checked = now  # the coordinator is away: the cached map is all we know; wait
            return
        routes = self.routes.routes()
        stale: dict[str, tuple[MatchClient, str]] = {}  # partition -> its old client, its endpoints
        todo = list(due)
        while todo:
            w = todo.pop()
            route = routes.get(w.symbol)
            if route is not None and route.partition == w.target and route.ingress_endpoints == w.endpoints:
                w.checked = time.monotonic()  # still the owner: a failover, or just slow; wait on
                continue
            # the symbol has another owner (or none): take the command back unless its answer
            # is being delivered right now. One that could take effect twice only if it never
            # left this client: once sent, the old partition may have applied it before the
            # move; while that partition is reachable its answer (the outcome, or MOVED: no
            # effect) will come, and when it is not the caller is told rather than risk it twice.
            safe = resend_safe_elsewhere(w.command)
            unknown = False
            with self._lock:
                if w.settled:
                    continue
                taken = w.client.take_back(w.inner, unsent_only=not safe)
                if taken == "sent":
                    if w.client.connected:
                        w.checked = time.monotonic()
                        continue
                    taken = w.client.take_back(w.inner)
                    unknown = True
                if taken != "taken":
                    continue
                w.settled = True
                self._waiting.discard(w)
                if w.target not in stale:
                    stale[w.target] = (w.client, w.endpoints)
                    if self._clients.get(w.target) is w.client and (route is None or route.partition == w.target):
                        # the same partition at other endpoints: the resend needs a new client
                        del self._clients[w.target]
                        self._endpoints.pop(w.target, None)
                    # every other command waiting on that client: checked now
                    todo.extend(x for x in self._waiting if x.client is w.client and not x.settled and x not in todo)
            if unknown:
                log.warning("%s: partition %s received a %s but never answered and cannot be reached; "
                            "not sent elsewhere (it may have been applied there)", w.symbol, w.target,
                            w.command.get("op"))
                w.outer.set_exception(OutcomeUnknown(w.command, w.symbol, w.target,
                                                     None if route is None else route.partition))
                continue
            if route is None:
                w.outer.set_exception(UnknownSymbol(w.symbol))
                continue
            log.warning("%s: partition %s did not answer and the map names %s now; sending the command there",
                        w.symbol, w.target, route.partition)
            self.stats.rerouted += 1
            self._send(w.outer, w.command, None, w.symbol, w.attempt + 1, since=w.since)
        for partition, (client, endpoints) in stale.items():
            self._retire_client(partition, client, endpoints, routes)

    def _retire_client(self, partition: str, client: MatchClient, endpoints: str, routes: dict[str, Route]) -> None:
        """Close ``client`` (of ``partition``, at ``endpoints``) if the partition left the map or
        moved to other endpoints: a retired partition's client would reconnect forever."""
        now = next((r.ingress_endpoints for r in routes.values() if r.partition == partition), None)
        if now is None:  # it owns no symbol: does it still exist?
            try:
                with httpx.Client(timeout=self.routes.timeout) as http:
                    resp = http.get(f"{self.coordinator_url}/v1/partitions/{partition}")
            except httpx.HTTPError:
                return  # unknown for now: looked at again when it next fails to answer
            if resp.status_code != 404 and resp.status_code >= 400:
                return
            now = "" if resp.status_code == 404 else resp.json().get("ingress_endpoints") or ""
        if now and now == endpoints:
            return  # still there: it just no longer owns the symbol
        with self._lock:
            if self._clients.get(partition) is client:
                del self._clients[partition]
                self._client_endpoints.pop(partition, None)
                self._endpoints.pop(partition, None)
        self.stats.retired += 1
        log.info("partition %s %s: its client closed", partition, "moved to other endpoints" if now else "is gone")
        client.close()  # what still waits there (sent with partition=) fails: the partition is gone

    def _after_moved(self, moved: MovedError, outer: Future, command: dict, symbol: str, target: str,
                     attempt: int, since: float | None = None) -> None:
        log.info("%s: partition %s answered MOVED (epoch %d); refreshing routes", moved.symbol, target, moved.epoch)
        self._trace("moving" if moved.moving else "not_yet" if moved.not_yet else "moved", moved.symbol, target)
        if moved.moving and moved.dest:
            self._warm(moved.dest)
        try:
            cached = self.routes.routes().get(moved.symbol)
            if cached is None or cached.epoch < moved.epoch:
                self.routes.refresh()  # one look; a move still under way ends in the long-poll below
                cached = self.routes.routes().get(moved.symbol)
                if cached is None:
                    raise UnknownSymbol(moved.symbol)
                if cached.epoch < moved.epoch:
                    raise StaleRoute(moved.symbol, moved.epoch, cached.epoch)
            route = cached
            if route.partition == target and moved.not_yet:
                # the map names the destination of a migration whose activation is being applied
                # (the coordinator flips the route while it sends the activation): moments away
                time.sleep(min(0.002 * 2**attempt, 0.05))
            elif route.partition == target:
                # The map still names the partition that refused: it may lag behind the partitions
                # (a move in progress). Give it a moment, then look again.
                time.sleep(min(0.05 * 2**attempt, 1.0))
                self.routes.refresh()
        except StaleRoute as exc:
            # a symbol being moved ("moving": the map gets the new owner at the switch): wait for
            # the map's next version (a long-poll answered at the flip), not on a back-off timer
            start = since if since is not None else time.monotonic()
            while True:
                waited = time.monotonic() - start
                if waited >= self.moved_timeout:
                    outer.set_exception(MoveTimeout(moved.symbol, moved.epoch, waited))
                    return
                cached = self.routes.routes().get(moved.symbol)
                if cached is not None and cached.epoch >= moved.epoch:
                    break
                self.routes.wait_for_update(min(1.0, self.moved_timeout - waited))
            log.debug("%s: %s; the map caught up", moved.symbol, exc)
        except RoutingError as exc:
            outer.set_exception(exc)
            return
        except Exception as exc:  # noqa: BLE001 - the future must always be completed
            outer.set_exception(exc)
            return
        now = self.routes.routes().get(moved.symbol)
        if now is not None:
            self._trace("route", moved.symbol, now.partition)
        self._send(outer, command, None, symbol, attempt + 1, since=since)

    def _warm(self, partition: str) -> None:
        """Open the session to a migration's destination now (on its own thread), so the first
        command sent there after the switch does not wait for a connection to be set up."""
        with self._lock:
            if partition in self._clients or partition in self._warming or self._closed:
                return
            done = self._warming[partition] = threading.Event()

        def connect() -> None:
            try:
                self._make_client(partition)
            except Exception as exc:  # noqa: BLE001 - only a head start: the resend connects anyway
                log.info("partition %s: no session ahead of the switch (%s)", partition, exc)
            finally:
                with self._lock:
                    self._warming.pop(partition, None)
                done.set()

        threading.Thread(target=connect, name=f"matchx-warm-{partition}", daemon=True).start()

    def _trace(self, event: str, symbol: str, partition: str) -> None:
        if self.trace is None:
            return
        try:
            self.trace(event, symbol, partition)
        except Exception:  # noqa: BLE001 - a diagnostic hook must never lose a command
            log.exception("trace hook failed")
