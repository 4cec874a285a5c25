"""A replica's own ports (private gRPC, HTTP status) bind where `--private-host` says, and
`make run` puts them on loopback and hands replicas the API key (and no other secret)."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

from benchmarks.processes import free_port
from launcher.services import plan
from mlops_core.settings import Settings


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on `port`, from the kernel's own tables."""
    found: set[str] = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # The kernel prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.ip_address(socket.inet_ntop(family, raw))
            # gRPC listens on IPv6 sockets for IPv4 addresses too (::ffff:127.0.0.1).
            found.add(str(getattr(ip, "ipv4_mapped", None) or ip))
    return found


def test_private_ports_listen_on_loopback_only(start_inference, iris_repo: Path):
    private = free_port()
    server = start_inference(
        iris_repo,
        name="loopback",
        env={"MLOPS_GRPC_HOST": "0.0.0.0"},
        extra_args=["--private-grpc-port", str(private), "--private-host", "127.0.0.1"],
    )
    assert listening_addresses(private) == {"127.0.0.1"}
    assert listening_addresses(server.http_port) == {"127.0.0.1"}
    assert listening_addresses(server.grpc_port) & {"0.0.0.0", "::"}, "clients' port stays open"


def test_without_private_host_every_port_follows_the_grpc_host(start_inference, iris_repo: Path):
    private = free_port()
    server = start_inference(
        iris_repo,
        name="all-interfaces",
        env={"MLOPS_GRPC_HOST": "0.0.0.0"},
        extra_args=["--private-grpc-port", str(private)],
    )
    for port in (private, server.http_port, server.grpc_port):
        assert listening_addresses(port) & {"0.0.0.0", "::"}, port


def test_make_run_binds_replica_ports_to_loopback_and_passes_the_api_key(tmp_path: Path):
    settings = Settings(_env_file=None, data_dir=tmp_path, redis_url=None)
    stack = plan(settings, python="py")
    replicas = [s for s in stack.services if s.name.startswith("inference.")]
    assert len(replicas) == 2
    secrets = {"GITHUB_WEBHOOK_SECRET": "hook", "MLOPS_API_KEY": "key"}
    for replica in replicas:
        assert replica.argv[replica.argv.index("--private-host") + 1] == "127.0.0.1"
        env = replica.environment({"PATH": "/usr/bin", **secrets}, secrets, "/venv/bin/python")
        assert env["MLOPS_API_KEY"] == "key"
        assert "GITHUB_WEBHOOK_SECRET" not in env
    worker = next(s for s in stack.services if s.name == "worker")
    env = worker.environment({"PATH": "/usr/bin", **secrets}, secrets, "/venv/bin/python")
    assert not secrets.keys() & env.keys()
