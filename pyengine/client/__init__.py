"""The client SDK: ``MatchClient`` (one partition) and ``RoutedClient`` (a partitioned system,
routes from the coordinator). Imports only the wire format (pyengine/wire) and the JVM start
(pyengine/jvm.py); see docs/architecture.md."""

from pyengine.client.match_client import (
    AuthenticationError,
    ClientError,
    ClientStats,
    MatchClient,
    MovedError,
    Reply,
    UnauthorisedError,
)
from pyengine.client.routed import OutcomeUnknown, RoutedClient, RoutedStats, UnknownPartition
from pyengine.client.routing import (
    CoordinatorUnavailable,
    Route,
    RouteCache,
    RoutingError,
    StaleRoute,
    UnknownSymbol,
)

__all__ = [
    "AuthenticationError", "ClientError", "ClientStats", "CoordinatorUnavailable", "MatchClient",
    "MovedError", "OutcomeUnknown", "Reply", "Route", "RouteCache", "RoutedClient", "RoutedStats", "RoutingError",
    "StaleRoute", "UnauthorisedError", "UnknownPartition", "UnknownSymbol",
]
