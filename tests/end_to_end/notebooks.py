"""The repository's example notebook and the variants a user would push after it."""

from __future__ import annotations

import nbformat

from benchmarks.processes import REPO_ROOT

EXAMPLE = REPO_ROOT / "notebooks" / "example_notebook.ipynb"
PATH = "notebooks/example_notebook.ipynb"
"""Where the user's repository keeps it, as in the README's quick start."""


def example() -> str:
    return EXAMPLE.read_text()


def _edit(notebook: str, tag: str, old: str, new: str) -> str:
    """`notebook` with `old` replaced by `new` in the cell tagged `tag` (found exactly once)."""
    nb = nbformat.reads(notebook, as_version=4)
    (cell,) = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    assert cell.source.count(old) == 1, f"{old!r} is not once in the {tag} cell"
    cell.source = cell.source.replace(old, new)
    return nbformat.writes(nb)


def retuned(c: float, version: str) -> str:
    """A second model: another regularisation strength, and the notebook's VERSION bumped."""
    notebook = _edit(example(), "mlops:training", "C = 1.0", f"C = {c}")
    return _edit(notebook, "mlops:config", 'VERSION = "1.0.0"', f'VERSION = "{version}"')


def slow(seconds: float, version: str) -> str:
    """The example notebook, taking `seconds` longer to train: time to watch or kill it while
    it runs (a warm box serves the example in about a second)."""
    return _edit(
        retuned(c=1.0, version=version),
        "mlops:training",
        "C = 1.0",
        f"import time\ntime.sleep({seconds})\nC = 1.0",
    )


def broken_training() -> str:
    """A user's bug: labels that do not match the rows, so scikit-learn raises in training."""
    return _edit(
        example(),
        "mlops:training",
        "model.fit(X_train, y_train)",
        "model.fit(X_train, y_train[:10])",
    )


def with_rollout(notebook: str, version: str, rollout: dict[str, object]) -> str:
    """The notebook declaring its own rollout policy in its config cell."""
    return _edit(
        notebook,
        "mlops:config",
        'VERSION = "1.0.0"',
        f'VERSION = "{version}"\nROLLOUT = {rollout!r}',
    )


def narrower() -> str:
    """A model trained on three of the four features: callers sending four get refused."""
    return _edit(
        example(),
        "mlops:data",
        "X, y = load_iris(return_X_y=True)",
        "X, y = load_iris(return_X_y=True)\nX = X[:, :3]",
    )


def shifted_labels() -> str:
    """A model that answers another species than the example for every flower."""
    return _edit(
        example(),
        "mlops:training",
        "model.fit(X_train, y_train)",
        "model.fit(X_train, (y_train + 1) % 3)",
    )
