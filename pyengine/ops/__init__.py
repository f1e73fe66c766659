"""Operator tools: matchctl (cli), the demo, replay, the multi-process system launcher (system)
and the engine build. May import every other package; see docs/architecture.md."""
