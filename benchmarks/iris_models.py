"""Iris models in a Triton-layout model repository, for benchmarks and tests.

Trained on the iris data set that scikit-learn ships, converted with skl2onnx (no ZipMap).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import numpy as np
import onnx
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression

from mlops_core.signature import MODEL_FILE, SIGNATURE_FILE, ModelSignature, TensorSpec

TARGET_OPSET = 17


def iris() -> tuple[np.ndarray, np.ndarray]:
    data = load_iris()
    return data.data.astype(np.float32), data.target


def train(kind: str, seed: int = 0) -> Any:
    """`lr` and `rf` classifiers, `linreg` and `rfreg` regressors (petal width from the rest)."""
    x, y = iris()
    if kind == "lr":
        return LogisticRegression(max_iter=200, random_state=seed).fit(x, y)
    if kind == "rf":
        return RandomForestClassifier(n_estimators=100, random_state=seed).fit(x, y)
    if kind == "linreg":
        return LinearRegression().fit(x[:, :3], x[:, 3])
    if kind == "rfreg":
        return RandomForestRegressor(n_estimators=20, random_state=seed).fit(x[:, :3], x[:, 3])
    raise ValueError(f"unknown model kind {kind!r}")


def to_onnx(model: Any) -> onnx.ModelProto:
    n_features = int(model.n_features_in_)
    options = {id(model): {"zipmap": False}} if hasattr(model, "classes_") else None
    return convert_sklearn(
        model,
        initial_types=[("input", FloatTensorType([None, n_features]))],
        options=options,
        target_opset=TARGET_OPSET,
    )


def signature_of(model: Any) -> ModelSignature:
    n_features = int(model.n_features_in_)
    inputs = [TensorSpec("input", "FP32", [-1, n_features])]
    if hasattr(model, "classes_"):
        labels = [x.item() if hasattr(x, "item") else x for x in model.classes_]
        outputs = [
            TensorSpec("label", "INT64", [-1]),
            TensorSpec("probabilities", "FP32", [-1, len(labels)]),
        ]
        return ModelSignature(inputs=inputs, outputs=outputs, class_labels=labels)
    return ModelSignature(inputs=inputs, outputs=[TensorSpec("variable", "FP32", [-1, 1])])


def write_version(root: Path, name: str, version: str, model: Any) -> Path:
    """Write `<root>/<name>/<version>/` with model.onnx, signature.json and model.joblib."""
    directory = root / name / version
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MODEL_FILE).write_bytes(to_onnx(model).SerializeToString())
    signature_of(model).write(directory / SIGNATURE_FILE)
    joblib.dump(model, directory / "model.joblib")
    return directory


def main() -> None:
    """`python -m benchmarks.iris_models DIR`: an example repository (iris 1 LR, 2 RF; petal 1)."""
    import sys

    root = Path(sys.argv[1] if len(sys.argv) > 1 else "example-models").resolve()
    write_version(root, "iris", "1", train("lr"))
    write_version(root, "iris", "2", train("rf"))
    write_version(root, "petal", "1", train("linreg"))
    print(f"wrote iris (versions 1, 2) and petal (version 1) under {root}")


if __name__ == "__main__":
    main()
