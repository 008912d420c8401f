"""Pipelines run by the hub: the runner, its steps as subprocesses, and the apps' health checks."""
