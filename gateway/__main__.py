"""`python -m gateway`: serve the gateway with uvicorn on MLOPS_GATEWAY_HOST:MLOPS_GATEWAY_PORT."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from gateway.app import create_app
from gateway.errors import ConfigError
from mlops_core.settings import get_settings


def main() -> None:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("--host", default=settings.gateway_host)
    parser.add_argument("--port", type=int, default=settings.gateway_port)
    parser.add_argument(
        "--no-access-log", action="store_true", help="do not log one line per request"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=settings.gateway_workers,
        help="worker processes sharing the port (MLOPS_GATEWAY_WORKERS)",
    )
    args = parser.parse_args()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        app = create_app(settings)
    except ConfigError as exc:
        print(f"gateway refuses to start: {exc}", file=sys.stderr)
        sys.exit(2)
    # NOTE: several workers need the app as an import string; each builds its own from the
    # same settings (the one built above has only validated them).
    uvicorn.run(
        app if args.workers <= 1 else "gateway.app:app",
        workers=max(1, args.workers),
        host=args.host,
        port=args.port,
        log_level=settings.log_level.lower(),
        access_log=not args.no_access_log,
    )


if __name__ == "__main__":
    main()
