"""A replica added behind the fleet's DNS name is reached by a running gateway, without a
restart and without a failed request: replicas end connections after a configured age, and the
GOAWAY makes the gateway's channel resolve the name again.

Real processes throughout: a gateway whose `MLOPS_FLEET_ADDRESS` names a DNS server of the
test's own (`tests.support.dns_server`, as a Kubernetes headless Service's name would resolve),
and two replicas on the same port of two loopback addresses (127.0.0.2 and 127.0.0.3, which
Linux routes without set-up), told apart by their own request counters.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest

from benchmarks import iris_models
from benchmarks.processes import free_port
from tests.conftest import InferenceServer, StartInference
from tests.gateway.conftest import gateway_env, launch_gateway
from tests.support.dns_server import FleetDns

NAME = "fleet.test"
AGE_ENV = {
    "MLOPS_GRPC_MAX_CONNECTION_AGE_S": "1",
    "MLOPS_GRPC_MAX_CONNECTION_AGE_GRACE_S": "5",
}
X, _ = iris_models.iris()


def replica_on(
    start_inference: StartInference, repo: Path, host: str, grpc_port: int
) -> InferenceServer:
    """A standalone replica serving gRPC on host:grpc_port, its HTTP status on 127.0.0.1."""
    return start_inference(
        repo,
        name=f"aged-{host}",
        env={**AGE_ENV, "MLOPS_GRPC_HOST": host},
        # NOTE: the later --grpc-port wins over the one start_inference picks: both replicas
        # must share the port the DNS name is dialled with.
        extra_args=["--grpc-port", str(grpc_port), "--private-host", "127.0.0.1"],
    )


def served(replica: InferenceServer, model: str = "iris") -> float:
    """The replica's own count of inference requests for `model` (all versions)."""
    text = httpx.get(f"{replica.http_url}/metrics", timeout=5).text
    pattern = rf'^mlops_inference_requests_total\{{[^}}]*model="{model}"[^}}]*\}} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, flags=re.MULTILINE))


async def test_a_replica_added_behind_the_dns_name_gets_requests_without_errors(
    run_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    start_inference: StartInference,
    iris_repo: Path,
    gateway_redis: str,
) -> None:
    grpc_port = free_port()
    first = replica_on(start_inference, iris_repo, "127.0.0.2", grpc_port)
    with FleetDns(NAME, ["127.0.0.2"]) as dns:
        env = gateway_env(
            tmp_path_factory.mktemp("gateway-aged"),
            gateway_redis,
            MLOPS_FLEET_ADDRESS=f"dns://127.0.0.1:{dns.port}/{NAME}:{grpc_port}",
        )
        gateway = launch_gateway(run_dir, "gateway-aged", env)
        try:
            statuses: list[int] = []
            stop = asyncio.Event()

            async def predict_until_stopped(client: httpx.AsyncClient) -> None:
                while not stop.is_set():
                    response = await client.post(
                        "/models/iris/predict", json={"data": X[[0, 60, 120]].tolist()}
                    )
                    statuses.append(response.status_code)

            async with gateway.async_client(timeout=10) as client:
                load = [asyncio.create_task(predict_until_stopped(client)) for _ in range(4)]
                try:
                    await asyncio.sleep(1)
                    second = await asyncio.to_thread(
                        replica_on, start_inference, iris_repo, "127.0.0.3", grpc_port
                    )
                    dns.addresses.append("127.0.0.3")
                    added = len(statuses)
                    for _ in range(50):  # 10 s at most
                        if reached := await asyncio.to_thread(served, second):
                            break
                        await asyncio.sleep(0.2)
                    await asyncio.sleep(0.5)  # both replicas under load for a moment
                finally:
                    stop.set()
                    await asyncio.gather(*load)
        finally:
            gateway.process.stop()
    assert reached > 0, f"the added replica got no request in 10 s ({dns.queries} DNS queries)"
    assert served(first) > 0
    assert len(statuses) > added > 0
    assert [s for s in statuses if s != 200] == [], "failed requests during the change"
