"""In-process replicas for the inference tests that need exact timing (hot swap, loading)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from benchmarks.processes import free_port
from inference.metrics import ReplicaMetrics
from inference.repository import BatchingPolicy, ModelRepository
from inference.server import Replica, ReplicaOptions
from inference.sources import DirectorySource
from mlops_core.protocol import open_inference_pb2_grpc as pb_grpc
from mlops_core.settings import Settings


class GatedSource(DirectorySource):
    """A directory source whose fetches wait until the test opens the gate."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gate = asyncio.Event()

    async def fetch(self, name: str, version: str) -> Path:
        await self.gate.wait()
        return await super().fetch(name, version)


def make_repository(
    source: DirectorySource, keep_versions: int = 3, policy: BatchingPolicy | None = None
) -> ModelRepository:
    return ModelRepository(
        source, ReplicaMetrics(), policy or BatchingPolicy(), keep_versions=keep_versions
    )


@pytest.fixture
async def in_process_replica(
    iris_repo: Path,
) -> AsyncIterator[tuple[Replica, pb_grpc.GRPCInferenceServiceStub]]:
    """A standalone replica in this process, with a stub connected to it."""
    settings = Settings(replica_id="in-process", grpc_host="127.0.0.1")
    replica = Replica(
        settings,
        ReplicaOptions(model_repository=iris_repo, grpc_port=free_port(), http_port=free_port()),
    )
    await replica.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{replica.options.grpc_port}")
    yield replica, pb_grpc.GRPCInferenceServiceStub(channel)
    await channel.close()
    await replica.stop(0)
