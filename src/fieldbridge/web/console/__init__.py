"""The web console: server-rendered pages over the same store functions as the CLI."""

from fieldbridge.web.console.routes import console_routes

__all__ = ["console_routes"]
