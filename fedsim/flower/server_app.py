"""The Flower ServerApp: Flower's engine hands it a grid, and it runs fedsim's round loop
over an exchange on that grid (fedsim.runner.lifecycle composes the two)."""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp


def build_server_app(serve: Callable[[Grid], None]) -> ServerApp:
    """A ServerApp whose main is `serve(grid)`."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        serve(grid)

    return app
