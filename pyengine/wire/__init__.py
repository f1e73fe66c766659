"""The wire format both sides speak: request/reply frames (protocol), the binary command codec
(codec) and the bulk layout (bulk). Imports nothing else of the project, so the client SDK, the
service and the engine can all depend on it; see docs/architecture.md."""
