"""What every member runs on each log message: the matching service with its reply cache
(matching) and the token checks (tokens). Imports the engine and the wire format; no JVM, no
sockets. See docs/architecture.md."""
