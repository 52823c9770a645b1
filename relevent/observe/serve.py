"""The metrics endpoint: `[runtime] metrics = "HOST:PORT"` (default 127.0.0.1:9108, "" off),
served by the runner process at /metrics with prometheus-client's exposition.

It has no authentication, so it listens on a loopback address unless the topology says
`metrics_insecure = true` (scrape through an SSH tunnel or a reverse proxy with TLS
otherwise).  `metrics_address` decides (pure); `MetricsServer` serves (a thread per scrape,
wsgiref), and only /metrics.

prometheus-client and the server are imported when the server starts, not with this
module: the runner imports it before it forks thespian's admin, and every actor process
would carry them (~7 MB of modules).
"""
from __future__ import annotations

import logging
import threading
from typing import Any


log = logging.getLogger("relevent.observe")

PATH = "/metrics"


class MetricsAddressError(ValueError):
    pass


def metrics_address(runtime: dict) -> tuple[str, int] | None:
    """(host, port) to serve metrics on, None when disabled; MetricsAddressError for an
    address beyond loopback without `metrics_insecure = true`."""
    text = runtime.get("metrics") or ""
    if not text:
        return None
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise MetricsAddressError(f"[runtime] metrics = {text!r}: expected HOST:PORT")
    from relevent.protocols.registry import is_loopback  # (here: the registry imports the topology package)

    if not is_loopback(host) and not runtime.get("metrics_insecure"):
        raise MetricsAddressError(
            f"[runtime] metrics = {text!r} is not a loopback address: the metrics endpoint has no "
            f"authentication, so it serves on 127.0.0.1 (or ::1) unless the topology also says "
            f"[runtime] metrics_insecure = true (a trusted network only); or scrape it through an SSH "
            f"tunnel or a reverse proxy (docs/observability.md)")
    return host, int(port)


def url_of(address: tuple[str, int]) -> str:
    host, port = address
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{PATH}"


def _only_metrics(app: Any) -> Any:
    def serve(environ: dict, start_response: Any) -> Any:
        if environ.get("PATH_INFO") != PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [f"not found: metrics are at {PATH}\n".encode()]
        return app(environ, start_response)
    return serve


class MetricsServer:
    """/metrics of `registry` on `address`, from a thread; `start` raises OSError when the
    port cannot be bound."""

    def __init__(self, registry: Any, address: tuple[str, int]) -> None:
        self.address = address
        self.registry = registry
        self.server: Any = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        import socket
        import socketserver
        from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

        from prometheus_client import make_wsgi_app

        class Quiet(WSGIRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - wsgiref's name
                pass

        class Server(socketserver.ThreadingMixIn, WSGIServer):
            daemon_threads = True
            address_family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET

        host, port = self.address
        self.server = make_server(host, port, _only_metrics(make_wsgi_app(self.registry)), Server, Quiet)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.5},
                                       name="metrics-http", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
