"""`norn demo`: an embedded hub with a sample app, and one deploy of it shown live."""

from __future__ import annotations

import tempfile
from pathlib import Path

from norn_cli.core.config import parse_config
from norn_cli.hub.pipeline.runner import attach_runner
from norn_cli.core.run_state import RunState
from norn_cli.hub.server import HubServer
from norn_cli.client.endpoint import Endpoint
from norn_cli.client.watch import RunView, follow

__all__ = ["DEMO_TOML", "run_demo"]

DEMO_TOML = """\
[apps.demo]
env = { IMAGE = "demo" }

[[apps.demo.deploy]]
name = "checkout"
run = "echo \\"fetching $NORN_REF\\"; sleep 0.2; echo \\"HEAD is now at $NORN_REF\\""

[[apps.demo.deploy]]
name = "build"
run = "for layer in base deps app; do echo \\"building $IMAGE:$NORN_REF layer $layer\\"; sleep 0.2; done"

[[apps.demo.deploy]]
name = "test"
run = "echo 'collected 12 items'; sleep 0.3; echo '12 passed in 0.31s'"
timeout = 30

[[apps.demo.deploy]]
name = "release"
run = "echo \\"tagging $IMAGE:$NORN_REF as current\\"; sleep 0.2; echo \\"run $NORN_RUN_ID released\\""
"""


async def run_demo(view: RunView, *, ref: str = "v1.0.0") -> RunState:
    """Serve a hub on a free loopback port with the sample app, deploy it through `view`, stop."""
    with tempfile.TemporaryDirectory(prefix="norn-demo-") as workdir:
        config = parse_config(DEMO_TOML, path=Path(workdir) / "norn.toml")
        srv = HubServer(host="127.0.0.1", port=0)
        runner = attach_runner(srv, config)
        async with srv:
            runner.start()
            return await follow(Endpoint.parse(srv.url), {"op": "deploy", "app": "demo", "ref": ref}, view, reattach=False)
