"""Many models per replica: memory per loaded model, start-to-ready and hot models' p99 with
10, 100 and 500 small models registered, and the memory budget's acceptance ratio: with a
budget holding half of 200 models, hot models' p99 under load against a replica serving only
them (goal: at most 1.5x).

Every model is a copy of one of two small iris models (an LR classifier, 4 features; a linear
regressor, 3 features), alternating, written once and copied: loading, not training, is what
is measured.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import iris_models
from mlops_core import fleet_state

KINDS = ("lr", "linreg")
"""Model i is a copy of KINDS[i % 2]."""
WIDTHS = {"lr": 4, "linreg": 3}
COUNTS = (10, 100, 500)
HOT_MODELS = 5
ACCEPTANCE_MODELS = 200
GOAL_RATIO = 1.5


def model_name(i: int) -> str:
    return f"model-{i:03d}"


@dataclass(frozen=True)
class ModelSet:
    root: Path
    names: list[str]
    trained: dict[str, Any]
    """Kind -> the scikit-learn model every copy of that kind was converted from."""

    def kind(self, name: str) -> str:
        return KINDS[int(name.rsplit("-", 1)[1]) % len(KINDS)]

    def width(self, name: str) -> int:
        return WIDTHS[self.kind(name)]

    def expected(self, name: str, rows: np.ndarray) -> np.ndarray:
        """What `name` answers for `rows`: labels (LR) or petal widths (regressor)."""
        return np.asarray(self.trained[self.kind(name)].predict(rows))


def write_models(root: Path, count: int) -> ModelSet:
    """`count` models, version 1 each, under `root` (Triton layout): two trained, the rest
    copied from them."""
    trained = {kind: iris_models.train(kind) for kind in KINDS}
    names = [model_name(i) for i in range(count)]
    for i, name in enumerate(names):
        if i < len(KINDS):
            iris_models.write_version(root, name, "1", trained[KINDS[i]])
        else:
            shutil.copytree(root / model_name(i % len(KINDS)), root / name)
    return ModelSet(root, names, trained)


async def desire_models(redis_url: str, names: Sequence[str]) -> None:
    """Version 1 of each model desired, written at once with one change notice."""
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    try:
        value = json.dumps({"active": "1", "warm": []})
        await redis.hset(fleet_state.DESIRED_KEY, mapping=dict.fromkeys(names, value))
        await redis.publish(fleet_state.CHANGED_CHANNEL, "many-models")
    finally:
        await redis.aclose()


def health(http_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{http_url}/health", timeout=5) as response:
        return json.loads(response.read())
