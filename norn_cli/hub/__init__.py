"""The server: `norn serve`. Connections, routing, the /api ops, fan-out, metrics, brokers and the pipeline runner. Imports only core."""
