"""`norn demo`: an embedded hub with a sample app; a deploy that fails its tests, then the fixed one, shown live."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from norn_cli.core.config import parse_config
from norn_cli.hub.pipeline.runner import attach_runner
from norn_cli.core.run_state import RunState
from norn_cli.hub.server import HubServer
from norn_cli.client.endpoint import Endpoint
from norn_cli.client.watch import RunView, follow

__all__ = ["BROKEN_REF", "DEMO_TOML", "FIXED_REF", "run_demo"]

BROKEN_REF, FIXED_REF = "v1.0.0", "v1.0.1"

# About 6 s in all: v1.0.0 fails at `test` (2.5 s), v1.0.1 goes through (3 s).
DEMO_TOML = """\
# The sample app of `norn demo`. Run it yourself:
#   norn serve --config norn.toml      then      norn deploy demo v1.0.1
[apps.demo]
env = { IMAGE = "demo" }

[[apps.demo.deploy]]
name = "checkout"
run = "echo \\"fetching $NORN_REF\\"; sleep 0.4; echo \\"HEAD is now at $NORN_REF\\""

[[apps.demo.deploy]]
name = "build"
run = "for layer in base deps app; do echo \\"building $IMAGE:$NORN_REF layer $layer\\"; sleep 0.4; done"

[[apps.demo.deploy]]
name = "test"
# v1.0.0 has a bug its tests catch; v1.0.1 fixes it.
run = '''
echo 'collected 12 items'; sleep 0.8
if [ "$NORN_REF" = v1.0.0 ]; then echo 'test_login FAILED: expected 200, got 500'; echo '1 failed, 11 passed'; exit 1; fi
echo '12 passed in 0.80s'
'''
timeout = 30

[[apps.demo.deploy]]
name = "release"
run = "echo \\"tagging $IMAGE:$NORN_REF as current\\"; sleep 0.4; echo \\"run $NORN_RUN_ID released\\""
"""


async def run_demo(new_view: Callable[[], RunView], config_path: Path, *, between: Callable[[str], None]) -> tuple[RunState, RunState]:
    """Serve a hub on a free loopback port with the sample app (read from `config_path`), deploy the broken ref,
    then the fixed one, each through a new view; `between` hears what happens in between."""
    config = parse_config(config_path.read_text(), path=config_path)
    srv = HubServer(host="127.0.0.1", port=0)
    runner = attach_runner(srv, config)
    async with srv:
        runner.start()
        hub = Endpoint.parse(srv.url)
        broken = await follow(hub, {"op": "deploy", "app": "demo", "ref": BROKEN_REF}, new_view(), reattach=False)
        between(f"{BROKEN_REF} failed at its test step, as the demo planned; now its fix, {FIXED_REF}")
        fixed = await follow(hub, {"op": "deploy", "app": "demo", "ref": FIXED_REF}, new_view(), reattach=False)
        return broken, fixed
