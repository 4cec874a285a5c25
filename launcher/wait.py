"""Hold a service back until what it needs is ready, then become it (exec, same PID).

    python -m launcher.wait --redis-env REDIS_URL --http URL --timeout 120 -- python -m gateway

supervisord starts every program at once (its priorities order the starts, not readiness);
this is how Redis and MLflow still come first, after a restart of either too.
"""

from __future__ import annotations

import argparse
import os
import sys

from launcher.readiness import Check, HttpReady, RedisReady, wait_for


def parse(argv: list[str]) -> tuple[list[Check], float, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m launcher.wait")
    parser.add_argument("--http", action="append", default=[], help="URL that must answer 200")
    parser.add_argument("--redis", action="append", default=[], help="Redis URL that must PING")
    parser.add_argument(
        "--redis-env",
        action="append",
        default=[],
        metavar="NAME",
        help="variable holding a Redis URL that must PING (keeps its password out of argv)",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before giving up")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("a command to run is required after --")
    missing = [name for name in args.redis_env if not os.environ.get(name)]
    if missing:
        parser.error(f"--redis-env: {', '.join(missing)} not set")
    urls = [*args.redis, *(os.environ[name] for name in args.redis_env)]
    checks: list[Check] = [RedisReady(url) for url in urls]
    checks += [HttpReady(url) for url in args.http]
    return checks, args.timeout, command


def main(argv: list[str] | None = None) -> None:
    checks, timeout_s, command = parse(sys.argv[1:] if argv is None else argv)
    try:
        wait_for(checks, timeout_s)
    except TimeoutError as exc:
        sys.exit(f"{command[0]}: {exc}")
    sys.stdout.flush()
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
