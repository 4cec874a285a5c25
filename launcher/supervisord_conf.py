"""The supervisord.conf `make run` writes: one program per planned service with only its own
environment, restarted with backoff, stopped as a whole process group in reverse priority order.

The file holds per-program environments (the Redis password inside REDIS_URL, the secrets of
the services that get them), so it is written mode 0600, rewritten at every start, and never
printed.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from supervisor.options import ServerOptions, UnhosedConfigParser

START_SECS = 10
"""A program counts as started once it has stayed up this long; one that dies sooner is a
failed start, retried after 1, 2, 3... s (supervisord's backoff). 10 s covers a crash at import
or on bad settings (a few seconds on a busy 2-core machine); a program killed after that is
restarted at once, and serves again long before `supervisorctl status` says RUNNING."""
START_RETRIES = 5
"""Failed starts in a row before FATAL: 1+2+3+4+5 s of backoff lets a passing cause clear (a
port its dying predecessor still holds), and a program that cannot start is reported in well
under a minute."""
STOP_WAIT_S = 20
"""Seconds between SIGTERM and SIGKILL on stop: MLflow can take ~14 s right after it started."""
LOG_MAX_BYTES = "10MB"
LOG_BACKUPS = 5
SOCKET_PATH_MAX = 107
"""AF_UNIX addresses are 108 bytes, the last one a NUL."""
USERNAME = "launcher"
SUPERVISORD = "supervisord"
"""Its own log is `<logs>/supervisord.log`; no program may take that name."""


class CannotSupervise(ValueError):
    """supervisord cannot run the plan: a value supervisord.conf cannot hold, a data directory
    too deep for a socket path, or one another `make run` is using."""


@dataclass(frozen=True)
class Program:
    """One supervisord program: a planned service, ready to run."""

    name: str
    group: str
    """Programs of one group stop together; the group stops after every higher priority's."""
    priority: int
    argv: list[str]
    environment: dict[str, str]
    """The complete environment the program must see."""


@dataclass(frozen=True)
class SupervisorFiles:
    """supervisord's files in the data directory."""

    data_dir: Path

    @property
    def conf(self) -> Path:
        return self.data_dir / "supervisord.conf"

    @property
    def control_dir(self) -> Path:
        """Mode 0700: only the user running `make run` reaches the control socket."""
        return self.data_dir / "supervisor"

    @property
    def socket(self) -> Path:
        return self.control_dir.absolute() / "supervisord.sock"

    @property
    def logs(self) -> Path:
        return self.data_dir / "logs"

    def log(self, program: str) -> Path:
        """Where `program`'s stdout and stderr go (supervisord rotates it), or its own."""
        return self.logs / f"{program}.log"

    def supervisorctl(self, python: str = sys.executable) -> str:
        """The command line that talks to this supervisord, for the banner and the README."""
        return f"{Path(python).parent / 'supervisorctl'} -c {self.conf}"

    def prepare(self) -> None:
        """The folders, private where they must be; CannotSupervise for too long a socket path
        or a data directory in use."""
        if len(str(self.socket).encode()) > SOCKET_PATH_MAX:
            raise CannotSupervise(
                f"the control socket {self.socket} is longer than {SOCKET_PATH_MAX} bytes:"
                " set MLOPS_DATA_DIR to a shorter path"
            )
        if self._answers():
            # NOTE: checked before we overwrite its supervisord.conf (and its password).
            raise CannotSupervise(
                f"another `make run` is using {self.data_dir}: its supervisord answers on"
                f" {self.socket}"
            )
        for folder in (self.control_dir, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o700)

    def _answers(self) -> bool:
        """Whether a supervisord listens on the socket (a file left by a killed one does not)."""
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(self.socket))
            except OSError:
                return False
        return True

    def write(self, text: str) -> None:
        self.conf.touch(mode=0o600)
        self.conf.chmod(0o600)
        self.conf.write_text(text)


def render(
    programs: list[Program],
    supervisord_env: Mapping[str, str],
    files: SupervisorFiles,
    password: str,
    directory: Path,
) -> str:
    """The configuration text. supervisord runs with `supervisord_env` and passes it to every
    program, so each program's section holds only where its environment differs.

    CannotSupervise when a value would not survive supervisord's parsing (we parse it back)."""
    logs = files.logs.absolute()
    address = str(files.socket)
    lines = [
        "; Written by `python -m launcher` at every start (edits are lost); mode 0600.",
        "[supervisord]",
        "nodaemon=true",
        # NOTE: its log file only, not also its stdout: the launcher follows the file, so a
        # supervisord whose launcher died (and whose stdout would be a broken pipe) still stops
        # its programs instead of dying on its first log line.
        "silent=true",
        f"logfile={_literal(str(files.log(SUPERVISORD).absolute()))}",
        f"logfile_maxbytes={LOG_MAX_BYTES}",
        f"logfile_backups={LOG_BACKUPS}",
        "loglevel=info",
        # Whoever runs `make run` runs supervisord: as root (a container, CI) say so, or it
        # logs a CRIT line at every start.
        *(["user=root"] if os.getuid() == 0 else []),
        f"pidfile={_literal(str(files.control_dir.absolute() / 'supervisord.pid'))}",
        f"childlogdir={_literal(str(logs))}",
        "",
        "[unix_http_server]",
        f"file={_literal(address)}",
        "chmod=0600",
        # NOTE: the socket's mode already keeps others out; the password keeps supervisord from
        # logging a CRIT line at every start and guards the socket if its folder is ever shared.
        f"username={USERNAME}",
        f"password={password}",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{_literal(address)}",
        f"username={USERNAME}",
        f"password={password}",
    ]
    for program in programs:
        lines += ["", *_program_section(program, supervisord_env, files, directory)]
    groups: dict[str, list[Program]] = {}
    for program in programs:
        groups.setdefault(program.group, []).append(program)
    for group, members in groups.items():
        if [p.name for p in members] != [group]:
            lines += [
                "",
                f"[group:{group}]",
                f"programs={','.join(p.name for p in members)}",
                f"priority={members[0].priority}",
            ]
    text = "\n".join(lines) + "\n"
    _check(text, programs, supervisord_env)
    return text


def _program_section(
    program: Program, supervisord_env: Mapping[str, str], files: SupervisorFiles, directory: Path
) -> list[str]:
    lost = set(supervisord_env) - set(program.environment)
    if lost:
        raise CannotSupervise(
            f"{program.name} must not see {', '.join(sorted(lost))}: not expressible"
        )
    changed = {k: v for k, v in program.environment.items() if supervisord_env.get(k) != v}
    environment = ",".join(f"{key}={_quoted(value)}" for key, value in sorted(changed.items()))
    return [
        f"[program:{program.name}]",
        f"command={_literal(shlex.join(program.argv))}",
        f"directory={_literal(str(directory))}",
        f"environment={environment}",
        f"priority={program.priority}",
        "autostart=true",
        # Every exit is restarted, a clean one too: a service that ends is not serving.
        "autorestart=true",
        f"startsecs={START_SECS}",
        f"startretries={START_RETRIES}",
        "stopsignal=TERM",
        f"stopwaitsecs={STOP_WAIT_S}",
        # Signals go to the program's whole process group: a worker's forkserver, MLflow's
        # gunicorn workers.
        "stopasgroup=true",
        "killasgroup=true",
        "redirect_stderr=true",
        f"stdout_logfile={_literal(str(files.log(program.name).absolute()))}",
        f"stdout_logfile_maxbytes={LOG_MAX_BYTES}",
        f"stdout_logfile_backups={LOG_BACKUPS}",
    ]


def _literal(value: str) -> str:
    """`value` as supervisord reads it back: it expands `%(name)s`, and a line holds one value."""
    if "\n" in value or "\r" in value:
        raise CannotSupervise("a line break cannot be written to supervisord.conf")
    return value.replace("%", "%%")


def _quoted(value: str) -> str:
    return _literal(f"'{value}'" if '"' in value else f'"{value}"')


def _check(text: str, programs: list[Program], supervisord_env: Mapping[str, str]) -> None:
    """Parse `text` as supervisord will, and name what would not arrive as meant (never its
    value: it may be a secret)."""
    options = ServerOptions()
    parser = UnhosedConfigParser()
    parser.expansions = options.environ_expansions
    parser.read_string(text)
    try:
        groups = options.process_groups_from_parser(parser)
    except ValueError as exc:
        message = str(exc)
        # NOTE: supervisord's message may quote a whole environment line: secrets and all.
        values = {v for p in programs for v in p.environment.values() if len(v) >= 8}
        for value in sorted(values, key=len, reverse=True):
            message = message.replace(value, "***")
        raise CannotSupervise(f"supervisord.conf cannot be read back: {message}") from None
    parsed = {c.name: c for group in groups for c in group.process_configs}
    for program in programs:
        config = parsed[program.name]
        if shlex.split(config.command) != program.argv:
            raise CannotSupervise(
                f"{program.name}: its command cannot be written to supervisord.conf"
            )
        seen = {**supervisord_env, **(config.environment or {})}
        for key in sorted(set(seen) | set(program.environment)):
            if seen.get(key) != program.environment.get(key):
                raise CannotSupervise(
                    f"{program.name}: {key} cannot be written to supervisord.conf"
                    " (a value with quotes, or ' ;' or ' #' in it?)"
                )
