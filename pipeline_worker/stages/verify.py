"""Verify stage: the ONNX model must predict what the scikit-learn model predicts.

Rows come from the notebook (`SAMPLE_INPUT_PATH`) when it saved some, else are drawn within
the training range the model exposes (a MinMaxScaler's or StandardScaler's statistics, a
GaussianNB's class means), else from a standard normal. Both models see the same float32 rows.

Tolerances: labels equal (a row whose two best scikit-learn probabilities are within
PROBABILITY_ATOL is a tie either model may break, and is counted but not failed);
probabilities within PROBABILITY_ATOL absolute; regression outputs within
REGRESSION_ATOL + REGRESSION_RTOL * |value|.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from sklearn.base import is_classifier
from sklearn.pipeline import Pipeline

from mlops_core.db import PipelineStatus
from mlops_core.errors import PipelineError

STAGE = PipelineStatus.VERIFYING
PROBABILITY_ATOL = 1e-4
REGRESSION_ATOL = 1e-4
REGRESSION_RTOL = 1e-4
GENERATED_ROWS = 64
MAX_SAMPLE_ROWS = 1000


@dataclass(frozen=True)
class ParityReport:
    rows: int
    source: str
    """`notebook`, `training range` or `standard normal`."""
    label_mismatches: int = 0
    ties: int = 0
    max_probability_diff: float = 0.0
    max_value_diff: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.rows} rows ({self.source}): {self.label_mismatches} label mismatches, "
            f"{self.ties} ties, max |probability diff| {self.max_probability_diff:.2e}, "
            f"max |value diff| {self.max_value_diff:.2e}"
        )


def sample_rows(model: Any, sample_path: Path | None, seed: int = 0) -> tuple[np.ndarray, str]:
    """The rows to compare on, and where they came from."""
    n_features = int(model.n_features_in_)
    if sample_path is not None:
        try:
            rows = np.asarray(np.load(sample_path, allow_pickle=False), dtype=np.float32)
        except Exception as exc:
            raise PipelineError(
                STAGE, f"cannot read the sample rows the notebook saved: {exc}"
            ) from None
        rows = rows.reshape(1, -1) if rows.ndim == 1 else rows
        if rows.ndim != 2 or rows.shape[1] != n_features or len(rows) == 0:
            raise PipelineError(
                STAGE,
                f"the sample rows at SAMPLE_INPUT_PATH have shape {rows.shape}; the model "
                f"expects (n, {n_features})",
            )
        return rows[:MAX_SAMPLE_ROWS], "notebook"
    rng = np.random.default_rng(seed)
    bounds = _training_range(model)
    if bounds is not None:
        low, high = bounds
        generated = rng.uniform(low, high, size=(GENERATED_ROWS, n_features))
        return generated.astype(np.float32), "training range"
    return rng.standard_normal((GENERATED_ROWS, n_features)).astype(np.float32), "standard normal"


def _training_range(model: Any) -> tuple[np.ndarray, np.ndarray] | None:
    first = model.steps[0][1] if isinstance(model, Pipeline) else model
    while isinstance(first, Pipeline):
        first = first.steps[0][1]
    if hasattr(first, "data_min_") and hasattr(first, "data_max_"):
        return np.asarray(first.data_min_), np.asarray(first.data_max_)
    if hasattr(first, "mean_") and getattr(first, "scale_", None) is not None:
        mean, scale = np.asarray(first.mean_), np.asarray(first.scale_)
        return mean - 2 * scale, mean + 2 * scale
    if hasattr(first, "theta_") and hasattr(first, "var_"):
        spread = 2 * np.sqrt(np.asarray(first.var_))
        return (first.theta_ - spread).min(axis=0), (first.theta_ + spread).max(axis=0)
    return None


def verify(model: Any, onnx_bytes: bytes, rows: np.ndarray, source: str) -> ParityReport:
    """Compare both models on `rows`; PipelineError with the figures on a mismatch."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    outputs = dict(
        zip(
            [o.name for o in session.get_outputs()],
            session.run(None, {input_name: rows}),
            strict=True,
        )
    )
    reference_rows = rows.astype(np.float64)
    if is_classifier(model):
        report = _compare_classifier(model, reference_rows, outputs, source)
        failed = report.label_mismatches > 0 or report.max_probability_diff > PROBABILITY_ATOL
    else:
        expected = np.asarray(model.predict(reference_rows), dtype=np.float64).reshape(
            len(rows), -1
        )
        got = np.asarray(outputs["variable"], dtype=np.float64).reshape(len(rows), -1)
        diff = np.abs(expected - got)
        report = ParityReport(len(rows), source, max_value_diff=float(diff.max(initial=0.0)))
        failed = bool(np.any(diff > REGRESSION_ATOL + REGRESSION_RTOL * np.abs(expected)))
    if failed:
        raise PipelineError(
            STAGE,
            f"the ONNX model does not predict what the scikit-learn model predicts on "
            f"{report.summary()}; tolerances: labels equal, probabilities "
            f"{PROBABILITY_ATOL:g}, values {REGRESSION_ATOL:g} + {REGRESSION_RTOL:g}*|value|",
        )
    return report


def _compare_classifier(
    model: Any, rows: np.ndarray, outputs: dict[str, np.ndarray], source: str
) -> ParityReport:
    expected_labels = np.asarray(model.predict(rows))
    got_labels = np.asarray(outputs["label"]).reshape(-1)
    max_prob = 0.0
    tie = np.zeros(len(rows), dtype=bool)
    if hasattr(model, "predict_proba") and "probabilities" in outputs:
        expected_prob = np.asarray(model.predict_proba(rows), dtype=np.float64)
        got_prob = np.asarray(outputs["probabilities"], dtype=np.float64)
        max_prob = float(np.abs(expected_prob - got_prob).max(initial=0.0))
        if expected_prob.shape[1] > 1:
            top2 = np.sort(expected_prob, axis=1)[:, -2:]
            tie = (top2[:, 1] - top2[:, 0]) <= PROBABILITY_ATOL
    if got_labels.dtype.kind in "OSU":
        expected_labels = expected_labels.astype(str)
        got_labels = got_labels.astype(str)
    differs = expected_labels != got_labels
    return ParityReport(
        rows=len(rows),
        source=source,
        label_mismatches=int(np.sum(differs & ~tie)),
        ties=int(np.sum(differs & tie)),
        max_probability_diff=max_prob,
    )
