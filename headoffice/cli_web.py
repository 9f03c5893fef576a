"""``linetap-office web``: the review web server (headoffice/web/), served by uvicorn.

    linetap-office web --config office.toml [--listen HOST] [--port N]

Listens on ``[web] listen``/``port`` (default 127.0.0.1:8443), with TLS when ``[web]
tls_cert`` and ``tls_key`` are set. Behind a TLS-terminating reverse proxy, leave TLS
unset, set ``cookie_secure = true`` and list the proxy in ``trusted_proxies`` (only
then is its ``X-Forwarded-For`` believed; uvicorn's own proxy-header handling is off so
there is one rule). SIGTERM or SIGINT stops it cleanly (exit 0): uvicorn finishes the
requests in progress and closes.
"""

from __future__ import annotations

import argparse
import logging
import threading
from pathlib import Path

from headoffice.config import load_office_config, office_config_path
from headoffice.index import open_index
from headoffice.stores import open_store
from runtime.process import setup_logging, stop_on_signals

log = logging.getLogger("linetap.office.web")


def cmd_web(args: argparse.Namespace) -> int:
    import uvicorn

    from headoffice.web.app import create_app

    cfg = load_office_config(office_config_path(args.config))
    web = cfg.web
    host = args.listen or web.listen
    port = args.port or web.port
    setup_logging(args.log_level)
    index = open_index(cfg.index_url)
    try:
        app = create_app(cfg, index, open_store(cfg, cfg.root))
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            ssl_certfile=str(web.tls_cert) if web.tls_cert else None,
            ssl_keyfile=str(web.tls_key) if web.tls_key else None,
            proxy_headers=False,
            server_header=False,
            date_header=True,
            log_config=None,
            log_level=args.log_level,
            access_log=args.log_level == "debug",
            workers=1,
        )
        scheme = "https" if web.tls_cert else "http"
        log.info("web review on %s://%s:%d/", scheme, host, port)
        server = uvicorn.Server(config)
        stopped = threading.Event()
        # uvicorn handles SIGTERM/SIGINT itself (a graceful shutdown), then raises the
        # signal again for the handler it found: ours notes it, so a stop asked for is a
        # clean exit 0 (systemd) rather than death by the signal.
        with stop_on_signals(stopped, log=log, doing="web review stopped"):
            server.run()
        return 0 if server.started else 1
    finally:
        index.close()


def add_web_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("web", help="the review web server (search, recordings, audit)")
    p.add_argument(
        "--config",
        type=Path,
        metavar="OFFICE_TOML",
        help="the office config (default $LINETAP_OFFICE_CONFIG, else "
        "/etc/linetap-office/office.toml); its [web] section says where to listen",
    )
    p.add_argument("--listen", metavar="HOST", help="address to listen on (overrides [web] listen)")
    p.add_argument("--port", type=int, metavar="N", help="TCP port (overrides [web] port)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_web)


__all__ = ["add_web_command", "cmd_web"]
