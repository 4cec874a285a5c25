"""Convert stage: the notebook's joblib model to ONNX with skl2onnx.

Input: one float32 tensor `input` of width `n_features_in_`. Classifiers give `label` and
`probabilities` as plain tensors (ZipMap off); regressors give `variable`. The opset is pinned
so a model converts the same way on every worker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import onnx
from onnx.helper import tensor_dtype_to_np_dtype
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.base import BaseEstimator, is_classifier
from sklearn.pipeline import Pipeline

from mlops_core.db import PipelineStatus
from mlops_core.errors import PipelineError
from mlops_core.signature import NUMPY_TO_OIP, ModelSignature, TensorSpec

STAGE = PipelineStatus.CONVERTING
TARGET_OPSET = 17
INPUT_NAME = "input"


@dataclass(frozen=True)
class ConvertedModel:
    onnx_bytes: bytes
    signature: ModelSignature
    estimator: str
    """The estimator's class name, e.g. `Pipeline(StandardScaler, LogisticRegression)`."""


def final_estimator(model: Any) -> Any:
    while isinstance(model, Pipeline):
        model = model.steps[-1][1]
    return model


def estimator_name(model: Any) -> str:
    if isinstance(model, Pipeline):
        return f"Pipeline({', '.join(estimator_name(step) for _, step in model.steps)})"
    return type(model).__name__


def convert(model: Any) -> ConvertedModel:
    """Convert a fitted scikit-learn estimator; PipelineError names what cannot be converted."""
    if not isinstance(model, BaseEstimator):
        raise PipelineError(
            STAGE,
            f"MODEL_OUTPUT_PATH holds a {type(model).__module__}.{type(model).__name__}, "
            "not a scikit-learn estimator",
        )
    n_features = getattr(model, "n_features_in_", None)
    if n_features is None:
        raise PipelineError(
            STAGE, f"{estimator_name(model)} has no n_features_in_: was it fitted before export?"
        )
    classifier = is_classifier(model)
    options = {id(final_estimator(model)): {"zipmap": False}} if classifier else None
    try:
        onx = convert_sklearn(
            model,
            initial_types=[(INPUT_NAME, FloatTensorType([None, int(n_features)]))],
            options=options,
            target_opset=TARGET_OPSET,
        )
    except Exception as exc:
        raise PipelineError(
            STAGE,
            f"skl2onnx cannot convert {_unconvertible(exc, model)}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}",
        ) from None
    labels = [_plain(c) for c in final_estimator(model).classes_] if classifier else None
    signature = ModelSignature(
        inputs=[TensorSpec(INPUT_NAME, "FP32", [-1, int(n_features)])],
        outputs=[_tensor_spec(o) for o in onx.graph.output],
        class_labels=labels,
        extra={"estimator": estimator_name(model), "target_opset": TARGET_OPSET},
    )
    return ConvertedModel(onx.SerializeToString(), signature, estimator_name(model))


def _unconvertible(exc: Exception, model: Any) -> str:
    """The class skl2onnx choked on: named in its message when it lacks a converter."""
    found = re.search(r"<class '([\w.]+)'>", str(exc))
    if found:
        return f"estimator {found.group(1).rsplit('.', 1)[-1]} ({found.group(1)})"
    return f"estimator {estimator_name(model)}"


def _tensor_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor = value.type.tensor_type
    if tensor.elem_type == onnx.TensorProto.STRING:
        datatype = "BYTES"
    else:
        datatype = NUMPY_TO_OIP[tensor_dtype_to_np_dtype(tensor.elem_type)]
    shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    return TensorSpec(value.name, datatype, shape)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
