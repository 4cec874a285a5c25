"""Push to served: the whole platform (`python -m launcher`, as `make run` starts it), a local
git repository holding the example notebook, and ten pushes, each delivered as GitHub would
(a signed webhook). Each figure is webhook sent → the first REST predict answered by the new
version; the pipelines' own stage timings say where the time went.

`python -m benchmarks.push_to_served [-n 10] [--json out.json]`, or the `push` part of
`python -m benchmarks run`. About two minutes: the stack's start, then ~5-10 s per push.

NOTE: the stack and the git helpers are the end-to-end tests' own (`tests/end_to_end/stack.py`,
`tests/gateway/conftest.py`), so the benchmark measures exactly the platform those tests check.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from tests.gateway.conftest import LocalRepo

MODEL = "iris-classifier"
"""MODEL_NAME in the example notebook."""
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3]]
SERVED_TIMEOUT_S = 180
POLL_S = 0.05
GAP_S = 8.0
"""Pause between one pipeline's end and the next push: a person's pushes are minutes apart,
and the worker warms its next box once a pipeline is served (`pipeline_worker.warm_box`)."""
GOAL_MEDIAN_S = 5.0
GOAL_FIRST_GAP_S = 2.0
TERMINAL = {"succeeded", "failed", "cancelled"}
BOX_LINE = re.compile(r"sandbox box-[0-9a-f]+: (warm, started [\d.]+s ago|starting now)")
"""The worker's log line saying whether the pipeline's box was warm."""


def deliver(api: httpx.Client, repo: LocalRepo, sha: str, changed: str) -> tuple[str, float]:
    """The push of `sha`, signed as GitHub signs it; the pipeline it started and when."""
    from tests.end_to_end.stack import WEBHOOK_SECRET
    from tests.gateway.conftest import signed_post

    payload = repo.push_payload(sha, modified=[changed])
    sent = time.monotonic()
    response = signed_post(api, payload, secret=WEBHOOK_SECRET)
    response.raise_for_status()
    (pipeline_id,) = response.json()["pipeline_ids"]
    return pipeline_id, sent


def wait_served(api: httpx.Client, version: str, pipeline_id: str, sent: float) -> float:
    """Seconds from `sent` to the first REST prediction made by `version`."""
    deadline = sent + SERVED_TIMEOUT_S
    while time.monotonic() < deadline:
        response = api.post(f"/models/{MODEL}/predict", json={"data": ROWS})
        if response.status_code == 200 and response.json().get("version") == version:
            return time.monotonic() - sent
        pipeline = api.get(f"/pipelines/{pipeline_id}").json()
        if pipeline["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"pipeline {pipeline_id} {pipeline['status']}: {pipeline['error']}")
        time.sleep(POLL_S)
    raise TimeoutError(f"version {version} not served after {SERVED_TIMEOUT_S}s")


def wait_ended(api: httpx.Client, pipeline_id: str) -> dict[str, Any]:
    """The pipeline's record once it ended (its post-deploy work included)."""
    deadline = time.monotonic() + SERVED_TIMEOUT_S
    while time.monotonic() < deadline:
        pipeline: dict[str, Any] = api.get(f"/pipelines/{pipeline_id}").json()
        if pipeline["status"] in TERMINAL:
            return pipeline
        time.sleep(0.1)
    raise TimeoutError(f"pipeline {pipeline_id} did not end")


def measure(
    pushes: int, workdir: Path, env_extra: dict[str, str] | None = None, gap_s: float = GAP_S
) -> dict[str, Any]:
    """Start the stack, push `pushes` times one after the other (`gap_s` between a pipeline's
    end and the next push; the first push right after the stack is ready); every figure."""
    # NOTE: imported here, so the report renders without the tests' helpers.
    from tests.end_to_end import notebooks
    from tests.end_to_end.stack import stack_env, started_stack
    from tests.gateway.conftest import git, make_local_repo

    env = {**stack_env(workdir / "data", replicas=2), **(env_extra or {})}
    runs: list[dict[str, Any]] = []
    with (
        started_stack("push-bench", workdir, env) as stack,
        httpx.Client(base_url=stack.gateway, timeout=30) as api,
    ):
        repo = make_local_repo(workdir / "git", "iris", {notebooks.PATH: notebooks.example()})
        registered = api.post(
            "/repos",
            json={"github_url": repo.url, "branch": "main", "notebook_path": notebooks.PATH},
        )
        registered.raise_for_status()
        sha = git("rev-parse", "HEAD", cwd=repo.work)
        for n in range(1, pushes + 1):
            if n > 1:
                time.sleep(gap_s)
                # A new model each time: another C, the notebook's VERSION bumped.
                notebook = notebooks.retuned(c=round(1.0 / n, 4), version=f"{n}.0.0")
                sha = repo.commit({notebooks.PATH: notebook})
            pipeline_id, sent = deliver(api, repo, sha, notebooks.PATH)
            served_s = wait_served(api, str(n), pipeline_id, sent)
            pipeline = wait_ended(api, pipeline_id)
            ended_s = time.monotonic() - sent
            log = api.get(f"/pipelines/{pipeline_id}/logs").json()["text"]
            box = BOX_LINE.search(log)
            runs.append(
                {
                    "push": n,
                    "webhook_to_served_s": round(served_s, 3),
                    "webhook_to_end_s": round(ended_s, 3),
                    "status": pipeline["status"],
                    "stage_timings": pipeline.get("stage_timings", {}),
                    "served_s": pipeline.get("served_s"),
                    "box": box.group(1) if box else None,
                    "loadavg_1m": round(os.getloadavg()[0], 2),
                }
            )
            print(
                f"push {n:2d}: served in {served_s:5.2f} s, ended in {ended_s:5.2f} s "
                f"({pipeline['status']}, box {runs[-1]['box']}, load "
                f"{runs[-1]['loadavg_1m']}) {pipeline.get('stage_timings')}",
                flush=True,
            )
    result = summarize(runs)
    result["gap_s"] = gap_s
    result["settings"] = env_extra or {}
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    served = [r["webhook_to_served_s"] for r in runs]
    median = statistics.median(served)
    rest = served[1:] or served
    stages: dict[str, list[float]] = {}
    for r in runs:
        for name, seconds in r["stage_timings"].items():
            stages.setdefault(name, []).append(seconds)
    return {
        "runs": runs,
        "median_s": round(median, 3),
        "first_s": served[0],
        "rest_median_s": round(statistics.median(rest), 3),
        "max_s": max(served),
        "stage_medians_s": {k: round(statistics.median(v), 3) for k, v in stages.items()},
        "goals": {
            f"median webhook-to-served <= {GOAL_MEDIAN_S:.0f} s": median <= GOAL_MEDIAN_S,
            f"first push within {GOAL_FIRST_GAP_S:.0f} s of the median": (
                served[0] - median <= GOAL_FIRST_GAP_S
            ),
        },
    }


def lines(result: dict[str, Any]) -> list[str]:
    """The figures as text (the report and the command line print the same)."""
    out = [
        "push  webhook→served  webhook→end",
        *(
            f"{r['push']:4d}  {r['webhook_to_served_s']:12.2f} s  {r['webhook_to_end_s']:9.2f} s"
            for r in result["runs"]
        ),
        f"{len(result['runs'])} pushes, {result['gap_s']:.0f} s apart; "
        f"median {result['median_s']:.2f} s, first {result['first_s']:.2f} s, "
        f"rest median {result['rest_median_s']:.2f} s, max {result['max_s']:.2f} s",
        "stage medians: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in result["stage_medians_s"].items()),
    ]
    out += [f"goal: {goal}: {'met' if met else 'NOT met'}" for goal, met in result["goals"].items()]
    return out


def section(result: dict[str, Any] | None) -> list[str]:
    """The report's section (`benchmarks/report.py`)."""
    if not result:
        return []
    return [
        "",
        "## Push to served: ten pushes through the whole platform",
        "",
        "Webhook sent (signed, as GitHub sends it) to the first REST prediction made by the new "
        "version; the example notebook, `python -m launcher` as `make run` starts it "
        "(`benchmarks/push_to_served.py`).",
        "",
        "```",
        *lines(result),
        "```",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--pushes", type=int, default=10)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--gap", type=float, default=GAP_S, help="seconds between pushes")
    parser.add_argument(
        "--env", nargs="*", default=[], help="extra NAME=VALUE settings for the stack"
    )
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory(prefix="push-bench-") as work:
        result = measure(args.pushes, Path(work), extra, args.gap)
    print("\n".join(lines(result)))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
