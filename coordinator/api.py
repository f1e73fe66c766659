"""REST API of the coordinator (FastAPI).  OpenAPI document at ``/openapi.json``.

Build an app with :func:`create_app`; ``python -m coordinator`` serves it with uvicorn.
Mutating endpoints (workers, partitions, symbols, topology) are "admin" endpoints: they
carry the optional ``admin_dependency`` given to :func:`create_app` (hook for
``coordinator.auth``); read endpoints (routes, health, GETs) do not.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coordinator import metrics, retire
from coordinator.errors import CoordinatorError
from coordinator.metrics import MigrationGauge, RoutingCollector
from coordinator.migrations import Driver, states_summary
from coordinator.models import (
    MigrationIn,
    MigrationOut,
    MoveIn,
    PartitionIn,
    PartitionUpdate,
    SymbolsIn,
    Topology,
    TransferIn,
    TransferOut,
    WorkerIn,
    WorkerUpdate,
)
from coordinator.store import DEFAULT_DB_PATH, CoordinatorStore, clean_validation_errors

log = logging.getLogger("coordinator.api")

VERSION_HEADER = "X-Routing-Version"
MAX_WAIT_SECONDS = 300.0
DEFAULT_WAIT_SECONDS = 30.0
_DISCONNECT_CHECK_SECONDS = 1.0


# ---------------------------------------------------------------------- response models
# (documentation of the response bodies in the OpenAPI document)


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = {}


class ErrorOut(BaseModel):
    error: ErrorBody


class MemberOut(BaseModel):
    worker_id: str
    member_id: int
    ingress_endpoint: str


class WorkerOut(BaseModel):
    id: str
    address: str
    partitions: list[str]


class PartitionOut(BaseModel):
    id: str
    state: str
    members: list[MemberOut]
    symbols: list[str]
    ingress_endpoints: str


class SymbolOut(BaseModel):
    symbol: str
    partition: str
    epoch: int
    previous_partition: str | None = None


class SymbolRoute(BaseModel):
    partition: str
    epoch: int
    ingress_endpoints: str


class PartitionRoute(BaseModel):
    state: str
    ingress_endpoints: str
    members: list[MemberOut]


class RoutesOut(BaseModel):
    version: int
    symbols: dict[str, SymbolRoute]
    partitions: dict[str, PartitionRoute]


class RouteOut(BaseModel):
    symbol: str
    partition: str
    epoch: int
    ingress_endpoints: str
    version: int


class HealthOut(BaseModel):
    status: str
    version: int
    # long-polls on /v1/routes held by this process right now: how many clients follow the map
    long_polls_waiting: int = 0


class PlacementOut(BaseModel):
    workers: list[str]  # where the new partition's members go: member i on workers[i]
    load: dict[str, int]  # members per worker now


class TopologyResult(BaseModel):
    changed: bool
    version: int


# ?force=true of DELETE /v1/partitions/{id} and POST /v1/topology (OpenAPI descriptions)
ForceDelete = Annotated[bool, Query(description="skip retiring the partition (no question about its funds): only "
                                    "for a partition that is gone for good (its funds stay in its data)")]
ForceTopology = Annotated[bool, Query(description="apply a document that drops partitions or moves symbols "
                                      "without asking the partitions: only for bootstrap and disaster recovery "
                                      "(their orders and funds stay in the old partitions)")]

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut} for code in (404, 409, 422)}


# ---------------------------------------------------------------------- long-poll support


class VersionWatcher:
    """Wakes long-polls when the store's version changes (listener is thread-safe)."""

    def __init__(self, store: CoordinatorStore) -> None:
        self._store = store
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self.closing = False
        self.waiting = 0  # long-polls held now (event loop thread only)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self.closing = False
        self._store.add_listener(self._on_change)

    def stop(self) -> None:
        self.close()
        try:
            self._store.remove_listener(self._on_change)
        except ValueError:
            pass

    def close(self) -> None:
        """Release every waiting long-poll now (they answer with the current table)."""
        self.closing = True
        self._notify()

    def _on_change(self, _version: int) -> None:
        self._notify()

    def _notify(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake()
        else:
            loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = asyncio.Event()

    async def wait_for(self, after_version: int, timeout: float, request: Request | None = None) -> None:
        """Return once version > after_version, on timeout, on close or client disconnect."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.waiting += 1
        try:
            while self._store.version <= after_version and not self.closing:
                remaining = deadline - loop.time()
                if remaining <= 0 or self._event is None:
                    return
                event = self._event
                try:
                    await asyncio.wait_for(event.wait(), min(remaining, _DISCONNECT_CHECK_SECONDS))
                except TimeoutError:
                    if request is not None and await request.is_disconnected():
                        return
        finally:
            self.waiting -= 1


# ---------------------------------------------------------------------- middleware


class VersionHeaderMiddleware:
    """Adds ``X-Routing-Version: <version after the request>`` to every HTTP response."""

    def __init__(self, app: ASGIApp, store: CoordinatorStore) -> None:
        self.app = app
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_version(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((VERSION_HEADER.lower().encode(), str(self.store.version).encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_version)


# ---------------------------------------------------------------------- app


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def create_app(
    store: CoordinatorStore | None = None,
    *,
    db_path: str | None = None,
    admin_dependency: Callable[..., Any] | None = None,
    migration_driver: Driver | None = None,
) -> FastAPI:
    """The coordinator ASGI app.

    ``store``: an open store (the app does not close it), or ``db_path`` to open one for
    the app's lifetime (default ``./var/coordinator.db``).  ``admin_dependency``: a FastAPI
    dependency run on every mutating endpoint (e.g. authentication).
    """
    owns_store = store is None
    if store is None:
        store = CoordinatorStore(db_path or DEFAULT_DB_PATH)
    watcher = VersionWatcher(store)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        watcher.start()
        if migration_driver is not None:
            resumed = migration_driver.resume()  # after a restart: carry on where each one stopped
            if resumed:
                log.info("resuming migrations %s", ", ".join(resumed))
        try:
            yield
        finally:
            if migration_driver is not None:
                migration_driver.stop()
            watcher.stop()
            if owns_store:
                store.close()

    app = FastAPI(
        title="matchx coordinator",
        version="1",
        description="Control plane: versioned map symbol -> partition -> workers.",
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.watcher = watcher
    app.add_middleware(VersionHeaderMiddleware, store=store)
    # the migration driver reports its migrations' states here (coordinator/metrics.py)
    app.state.migration_metrics = MigrationGauge()
    metrics.install(app, "coordinator", RoutingCollector(store), app.state.migration_metrics)
    if migration_driver is not None:
        gauge = app.state.migration_metrics
        migration_driver.on_change = lambda migs: gauge.set_states(states_summary(migs))
        gauge.set_states(states_summary(migration_driver.migs.list()))

    # -------------------------------------------------------------- error rendering

    @app.exception_handler(CoordinatorError)
    async def _coordinator_error(_req: Request, exc: CoordinatorError) -> Response:
        return _json(exc.to_dict(), exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_req: Request, exc: RequestValidationError) -> Response:
        err = CoordinatorError("validation_error", "malformed request", errors=clean_validation_errors(exc.errors()))
        return _json(err.to_dict(), err.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_req: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = {"error": {"code": code, "message": str(exc.detail), "details": {}}}
        return _json(body, exc.status_code)

    @app.exception_handler(Exception)
    async def _internal_error(_req: Request, exc: Exception) -> Response:
        log.exception("internal error", exc_info=exc)
        err = CoordinatorError("internal_error", "internal error")
        return _json(err.to_dict(), err.status)

    # -------------------------------------------------------------- routers

    public = APIRouter(prefix="/v1", responses=_ERRORS)
    admin = APIRouter(
        prefix="/v1",
        responses=_ERRORS,
        dependencies=[Depends(admin_dependency)] if admin_dependency else [],
    )

    @public.get("/health", response_model=HealthOut, tags=["health"])
    async def health() -> Any:
        return {**store.health(), "long_polls_waiting": watcher.waiting}

    # workers
    @public.get("/workers", response_model=list[WorkerOut], tags=["workers"])
    async def list_workers() -> Any:
        return store.list_workers()

    @public.get("/workers/{worker_id}", response_model=WorkerOut, tags=["workers"])
    async def get_worker(worker_id: str) -> Any:
        return store.get_worker(worker_id)

    @admin.post("/workers", status_code=201, response_model=WorkerOut, tags=["workers"])
    async def create_worker(body: WorkerIn) -> Any:
        return store.create_worker(body.id, body.address)

    @admin.put("/workers/{worker_id}", response_model=WorkerOut, tags=["workers"])
    async def update_worker(worker_id: str, body: WorkerUpdate) -> Any:
        return store.update_worker(worker_id, body.address)

    @admin.delete("/workers/{worker_id}", status_code=204, tags=["workers"])
    async def delete_worker(worker_id: str) -> Response:
        store.delete_worker(worker_id)
        return Response(status_code=204)

    # partitions
    @public.get("/partitions", response_model=list[PartitionOut], tags=["partitions"])
    async def list_partitions() -> Any:
        return store.list_partitions()

    @public.get("/partitions/{partition_id}", response_model=PartitionOut, tags=["partitions"])
    async def get_partition(partition_id: str) -> Any:
        return store.get_partition(partition_id)

    @public.get("/placement", response_model=PlacementOut, responses=_ERRORS, tags=["partitions"])
    async def placement(members: Annotated[int, Query(ge=1, le=3)] = 3) -> Any:
        """The coordinator's choice of workers for a new partition: the least-loaded ones (fewest
        members), one member per worker (``matchctl partition add`` without ``--workers``)."""
        return store.placement(members)

    @admin.post("/partitions", status_code=201, response_model=PartitionOut, tags=["partitions"])
    async def create_partition(body: PartitionIn) -> Any:
        return store.create_partition(body.id, members=body.members, state=body.state, symbols=body.symbols)

    @admin.patch("/partitions/{partition_id}", response_model=PartitionOut, tags=["partitions"])
    async def update_partition(partition_id: str, body: PartitionUpdate) -> Any:
        return store.update_partition(partition_id, state=body.state, members=body.members)

    @admin.delete("/partitions/{partition_id}", status_code=204, responses={503: {"model": ErrorOut}},
                  tags=["partitions"])
    async def delete_partition(
        partition_id: str,
        force: ForceDelete = False,
    ) -> Response:
        """Take a partition out of the map. Refused (409) while it owns symbols, is in a live
        migration or transfer, or holds funds; 503 when it cannot be asked. A coordinator with a
        migration driver first retires the partition in its own log (``retire``: refused while
        any account holds funds there; from then on the partition refuses deposits, orders,
        transfers and migrations, so nothing can be stranded in it) and undoes that if the
        deletion is refused after all: a refused DELETE changes nothing. The members keep
        running (answering reads) until the workers' topology drops them (``matchctl partition
        remove`` does both)."""
        members = store.check_deletable(partition_id)  # 404/409 before any command to the partition
        retired_here = False
        if migration_driver is not None and members and not force:
            # in a thread: a partition between leaders takes seconds to answer, and the event
            # loop serves the long-polls meanwhile
            retired_here = await asyncio.to_thread(retire.retire, migration_driver, partition_id)
        elif force and members:
            log.warning("partition %s deleted with force: it was not retired, its funds not checked", partition_id)
        try:
            store.delete_partition(partition_id)  # checks symbols, migrations, transfers again, atomically
        except Exception as exc:
            if retired_here:  # only what this request did: a partition retired before stays so
                failed = await asyncio.to_thread(retire.unretire, migration_driver, partition_id)
                if failed is not None and isinstance(exc, CoordinatorError):
                    exc.details["still_retired"] = failed
            raise
        return Response(status_code=204)

    @admin.post("/partitions/{partition_id}/symbols", response_model=PartitionOut, tags=["symbols"])
    async def assign_symbols(partition_id: str, body: SymbolsIn) -> Any:
        return store.assign_symbols(partition_id, body.symbols)

    @admin.delete("/partitions/{partition_id}/symbols/{symbol}", status_code=204, tags=["symbols"])
    async def unassign_from_partition(partition_id: str, symbol: str) -> Response:
        store.unassign_symbol(symbol, partition_id)
        return Response(status_code=204)

    # symbols
    @public.get("/symbols", response_model=list[SymbolOut], tags=["symbols"])
    async def list_symbols() -> Any:
        return store.list_symbols()

    @public.get("/symbols/{symbol}", response_model=SymbolOut, tags=["symbols"])
    async def get_symbol(symbol: str) -> Any:
        return store.get_symbol(symbol)

    @admin.put("/symbols/{symbol}", response_model=SymbolOut, tags=["symbols"])
    async def move_symbol(symbol: str, body: MoveIn) -> Any:
        """Move an assigned symbol to another partition (bumps its epoch)."""
        return store.move_symbol(symbol, body.partition, expected_epoch=body.expected_epoch)

    @admin.delete("/symbols/{symbol}", status_code=204, tags=["symbols"])
    async def unassign_symbol(symbol: str) -> Response:
        store.unassign_symbol(symbol)
        return Response(status_code=204)

    # routes
    routes_cache: list[Any] = [None, b""]  # [table object, its serialized bytes]

    def routes_response() -> Response:
        table = store.routes()
        if routes_cache[0] is not table:
            routes_cache[0], routes_cache[1] = table, orjson.dumps(table)
        return Response(routes_cache[1], media_type="application/json")

    @public.get(
        "/routes",
        tags=["routes"],
        responses={200: {"model": RoutesOut}},
        response_class=Response,
    )
    async def get_routes(
        request: Request,
        wait_version: Annotated[
            int | None,
            Query(ge=0, description="long-poll: answer once version > wait_version"),
        ] = None,
        timeout: Annotated[
            float,
            Query(ge=0, le=MAX_WAIT_SECONDS, description="long-poll limit in seconds"),
        ] = DEFAULT_WAIT_SECONDS,
    ) -> Response:
        """The whole routing table.  With ``wait_version=N`` the request is held until the
        version is greater than N or ``timeout`` seconds passed; either way it answers 200
        with the current table (compare its ``version`` with N)."""
        if wait_version is not None:
            await watcher.wait_for(wait_version, timeout, request)
        return routes_response()

    @public.get("/routes/{symbol}", response_model=RouteOut, tags=["routes"])
    async def get_route(symbol: str) -> Any:
        return store.route(symbol)

    # topology
    @public.get("/topology", response_model=Topology, tags=["topology"])
    async def get_topology() -> Any:
        return store.export_topology()

    @admin.post("/topology", response_model=TopologyResult, tags=["topology"])
    async def put_topology(
        body: Topology,
        force: ForceTopology = False,
    ) -> Any:
        """Replace the whole map atomically (idempotent if equal to the current one). On a
        coordinator with a migration driver, a document that drops a partition with members or
        moves an assigned symbol to another partition is refused (409
        ``topology_needs_migration``, nothing changed): the map would change without the
        partitions, and resting orders and funds would stay behind. Retire a partition with
        DELETE /v1/partitions/{id}, move a symbol with POST /v1/migrations; new symbols,
        partitions and workers are fine."""
        return store.load_topology(body, keep_state=migration_driver is not None and not force)

    # migrations
    def driver() -> Driver:
        if migration_driver is None:
            raise CoordinatorError("migrations_unavailable", "this coordinator runs no migration driver")
        return migration_driver

    @public.get("/migrations", response_model=list[MigrationOut], tags=["migrations"])
    async def list_migrations() -> Any:
        d = driver()
        return [d.describe(m) for m in d.migs.list()]

    @public.get("/migrations/{mid}", response_model=MigrationOut, tags=["migrations"])
    async def get_migration(mid: str) -> Any:
        d = driver()
        return d.describe(d.migs.get(mid))

    @admin.post("/migrations", response_model=MigrationOut, status_code=202, tags=["migrations"])
    async def start_migration(body: MigrationIn) -> Any:
        """Move a symbol with its book, held funds and idempotency state to another partition
        (freeze-sync-switch; docs/migration.md). Answers at once; poll GET /v1/migrations/{id}."""
        return driver().start(body.symbol, body.to, body.id)

    @admin.delete("/migrations/{mid}", response_model=MigrationOut, status_code=202, tags=["migrations"])
    async def abort_migration(mid: str) -> Any:
        """Abort before the point of no return: the source takes the symbol back."""
        return driver().abort(mid)

    @public.get("/transfers", response_model=list[TransferOut], tags=["transfers"])
    async def list_transfers() -> Any:
        return driver().transfers.list()

    @public.get("/transfers/{tid}", response_model=TransferOut, tags=["transfers"])
    async def get_transfer(tid: str) -> Any:
        return driver().transfers.get(tid)

    @admin.post("/transfers", response_model=TransferOut, status_code=202, tags=["transfers"])
    async def start_transfer(body: TransferIn) -> Any:
        """Move free funds of an account between partitions, exactly once by id (debit, in transit,
        credit; a refused credit is paid back). Answers at once; poll GET /v1/transfers/{id}."""
        d = driver()
        rec = d.transfers.create(body.id, body.account, body.asset, body.amount, body.from_, body.to)
        threading.Thread(target=d.transfers.run, args=(body.id,), daemon=True, name=f"transfer-{body.id}").start()
        return rec

    app.include_router(public)
    app.include_router(admin)
    return app
