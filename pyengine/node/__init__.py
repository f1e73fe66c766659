"""Member and worker processes: settings and the port plan (settings, topology), the JVM
bridge to the Java shim (bridge), the process entry points (member, worker) and local member
control (localcluster). Imports the service; see docs/architecture.md."""
