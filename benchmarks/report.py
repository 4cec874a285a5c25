"""From a run's JSON to the published report: a Markdown file (goals with their measured
ratios, a table per scenario) and a latency-vs-throughput plot (PNG)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import many_models, push_to_served

Results = dict[str, Any]
Cell = dict[str, Any]
PLOT_FILE = "latency_vs_throughput.png"
TIMES, NONE = "\u00d7", "\u2013"  # the multiplication sign; the dash of a missing figure
LR_CURVE = ["lr-c1", "lr-c16", "lr-c64"]


def label(key: str) -> str:
    """A server key as the report names it."""
    fixed = {
        "baseline": "minimal grpcio + onnxruntime",
        "baseline-pinned": "minimal grpcio + onnxruntime, pinned to 1 CPU",
        "mlserver": "MLServer 1.7.1",
        "mlserver-batch": "MLServer 1.7.1, adaptive batching (32, 2 ms)",
        "gateway": "our gateway (REST) → fleet",
    }
    if key in fixed:
        return fixed[key]
    match = re.fullmatch(r"ours-(\d+)r(-batch)?", key)
    if match is None:
        return key
    n, forced = int(match.group(1)), match.group(2) is not None
    return f"ours, {n} replica{'s' * (n > 1)}" + (", batching forced" if forced else "")


def find(results: Results, server: str, load: str) -> Cell | None:
    for cell in results["cells"]:
        if cell["server"] == server and cell["load"]["key"] == load:
            return cell
    return None


def best(results: Results, prefix: str, load: str, metric: str = "rps") -> Cell | None:
    """The cell of the server (key starting with `prefix`) with the most `metric` on `load`."""
    cells = [
        c for c in results["cells"] if c["server"].startswith(prefix) and c["load"]["key"] == load
    ]
    return max(cells, key=lambda c: c[metric], default=None)


@dataclass
class Goal:
    goal: str
    target: str
    measured: str
    ratio: float | None
    met: bool | None
    """None when the run did not measure both sides."""


def _ratio_goal(
    goal: str,
    ours: Cell | None,
    peer: Cell | None,
    metric: str,
    at_least: float | None = None,
    at_most: float | None = None,
    unit: str = "req/s",
) -> Goal:
    target = f"≥ {at_least:g}{TIMES}" if at_least is not None else f"≤ {at_most:g}{TIMES}"
    if ours is None or peer is None or not peer[metric]:
        return Goal(goal, target, "not measured in this run", None, None)
    ratio = ours[metric] / peer[metric]
    met = ratio >= at_least if at_least is not None else ratio <= (at_most or 0)
    met = met and ours["errors"] == 0
    measured = (
        f"{_fmt(ours[metric])} {unit} ({label(ours['server'])}) vs "
        f"{_fmt(peer[metric])} {unit} ({label(peer['server'])})"
    )
    if ours["errors"]:
        measured += f"; {ours['errors']} errors"
    return Goal(goal, target, measured, ratio, met)


def _oip_goal(results: Results) -> Goal:
    """OIP against predict over alternating rounds when the run has them (one pair else)."""
    goal = "OIP REST through the gateway at c=64 vs the gateway's own REST predict"
    oip = find(results, "gateway", "oip-rest-lr-c64")
    rounds = (oip or {}).get("rounds_vs_predict")
    if oip is None or not rounds:
        return _ratio_goal(
            goal, oip, find(results, "gateway", "rest-lr-c64"), "rows_per_s", 0.85, unit="rows/s"
        )
    predict_total, oip_total = (sum(r[i] for r in rounds) for i in (0, 1))
    ratio = oip_total / predict_total
    pairs = ", ".join(f"{_fmt(o)}/{_fmt(p)}" for p, o in rounds)
    measured = f"{len(rounds)} alternating rounds, OIP/predict rows/s: {pairs}"
    return Goal(goal, f"≥ 0.85{TIMES}", measured, ratio, ratio >= 0.85 and oip["errors"] == 0)


def goals(results: Results) -> list[Goal]:
    mls_lr = best(results, "mlserver", "lr-c64")
    ours_lr = best(results, "ours-", "lr-c64")
    listed = [
        _ratio_goal(
            "gRPC single-row LR, c=64: req/s vs MLServer's best", ours_lr, mls_lr, "rps", 3
        ),
        _ratio_goal(
            "gRPC single-row LR, c=64: p99 vs MLServer's best",
            ours_lr,
            mls_lr,
            "p99_ms",
            at_most=0.5,
            unit="ms",
        ),
        _ratio_goal(
            "gRPC single-row RF, c=64: req/s vs MLServer's best",
            best(results, "ours-", "rf-c64"),
            best(results, "mlserver", "rf-c64"),
            "rps",
            10,
        ),
        _ratio_goal(
            "gRPC single-row LR, c=64: req/s vs minimal grpcio + onnxruntime",
            ours_lr,
            find(results, "baseline", "lr-c64"),
            "rps",
            1.5,
        ),
        _ratio_goal(
            "gRPC single-row LR, c=1: p50 vs minimal grpcio + onnxruntime (idle cost)",
            find(results, "ours-1r", "lr-c1"),
            find(results, "baseline", "lr-c1"),
            "p50_ms",
            at_most=1.2,
            unit="ms",
        ),
        _ratio_goal(
            "REST predict, c=64: gateway req/s vs MLServer's best REST",
            find(results, "gateway", "rest-lr-c64"),
            best(results, "mlserver", "rest-lr-c64"),
            "rps",
            2,
        ),
        _oip_goal(results),
    ]
    listed += _rows_goals(results)
    listed += _swap_goals(results.get("swap"))
    listed += many_models.goals(results.get("models"))
    return listed


ROWS_GOALS = {64: 0.3, 1024: 0.7}
"""Rows per request -> the share of in-process onnxruntime's rows/s on the fleet's CPUs."""


def _rows_goals(results: Results) -> list[Goal]:
    """Many-row RF requests through the N-replica fleet against onnxruntime run in process on
    the same N CPUs (one thread per CPU, the faster of one session per process or one
    N-thread session): what serving costs on top of the model, per row. Each cell's own
    ceiling, measured right before and after it, when the run has one; else the run's."""
    n = results.get("plan", {}).get("replicas", 2)
    goals = []
    for rows, share in ROWS_GOALS.items():
        goal = (
            f"{rows}-row RF requests, c=16: rows/s vs in-process onnxruntime "
            f"({rows}-row calls, one thread per fleet CPU)"
        )
        target = f"≥ {share}{TIMES}"
        load = f"rf{rows}rows-c16"
        run_ceiling = results.get("ceilings", {}).get(f"rf-{rows}rows-fleet")
        ours = [
            (cell, ceiling)
            for cell in results["cells"]
            if cell["server"].startswith(f"ours-{n}r") and cell["load"]["key"] == load
            if (ceiling := cell.get("ceiling", run_ceiling)) is not None
        ]
        if not ours:
            goals.append(Goal(goal, target, "not measured in this run", None, None))
            continue
        cell, ceiling = max(ours, key=lambda pair: pair[0]["rows_per_s"] / pair[1]["rows_per_s"])
        ratio = cell["rows_per_s"] / ceiling["rows_per_s"]
        goals.append(
            Goal(
                goal,
                target,
                f"{_fmt(cell['rows_per_s'])} rows/s ({label(cell['server'])}) vs "
                f"{_fmt(ceiling['rows_per_s'])} rows/s ({ceiling.get('how', '')})",
                ratio,
                ratio >= share and cell["errors"] == 0,
            )
        )
    return goals


def _share(cell: Cell, run_ceiling: float | None) -> str:
    """The cell's rows/s as a share of its own ceiling (measured beside it), else the run's."""
    ceiling = cell.get("ceiling", {}).get("rows_per_s", run_ceiling)
    return f"{cell['rows_per_s'] / ceiling:.0%}" if ceiling else NONE


def _model_share(results: Results, server: str) -> str:
    """For the 64- and 1,024-row cells of `server`: in-process CPU per call (measured beside
    the cell) over the server's CPU per call."""

    def share(load: str) -> str:
        cell = find(results, server, load)
        in_process = (cell or {}).get("ceiling", {}).get("cpu_us_per_call")
        if cell is None or not in_process or not cell["requests"]:
            return NONE
        served = sum(cell["server_cpu_s"].values()) / cell["requests"] * 1e6
        return f"{in_process / served:.0%}"

    return f"{share('rf64rows-c16')} / {share('rf1024rows-c16')}"


def _swap_goals(swap: dict | None) -> list[Goal]:
    p99_goal, errors_goal = "20 version swaps under load: p99 vs steady p99", "… and errors"
    if not swap:
        return [
            Goal(p99_goal, f"≤ 1.5{TIMES}", "not measured in this run", None, None),
            Goal(errors_goal, "0", "not measured in this run", None, None),
        ]
    steady, during = swap["steady"], swap["during_swaps"]
    ratio = during["p99_ms"] / steady["p99_ms"]
    errors = steady["errors"] + during["errors"]
    return [
        Goal(
            f"{swap['swaps']} version swaps under load: p99 vs steady p99",
            f"≤ 1.5{TIMES}",
            f"{during['p99_ms']:.2f} ms during swaps vs {steady['p99_ms']:.2f} ms steady",
            ratio,
            ratio <= 1.5,
        ),
        Goal(
            errors_goal,
            "0",
            f"{errors} errors in {steady['requests'] + during['requests']} calls",
            None,
            errors == 0,
        ),
    ]


def _fmt(value: float) -> str:
    if math.isnan(value):
        return NONE
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cores(cell: Cell, roles: list[str] | None = None) -> str:
    cpu = cell["server_cpu_s"]
    used = sum(v for k, v in cpu.items() if roles is None or k in roles)
    return f"{used / cell['elapsed_s']:.2f}"


def _table(header: list[str], rows: list[list[str]], aligns: str = "") -> list[str]:
    """`aligns`: `l` or `r` per column; by default the first left, the rest (figures) right."""
    aligns = aligns or "l" + "r" * (len(header) - 1)
    align = ["---" if a == "l" else "---:" for a in aligns]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _servers(results: Results) -> list[str]:
    seen: list[str] = []
    for cell in results["cells"]:
        if cell["server"] not in seen:
            seen.append(cell["server"])
    return seen


def _columns(results: Results, loads: list[tuple[str, Callable[[Cell], str]]]) -> list[list[str]]:
    rows = []
    for server in _servers(results):
        cells = [find(results, server, load) for load, _ in loads]
        if all(c is None for c in cells):
            continue
        row = [label(server)]
        for cell, (_, show) in zip(cells, loads, strict=True):
            row.append(NONE if cell is None else show(cell) + ("" if not cell["errors"] else " ⚠"))
        rows.append(row)
    return rows


def render_markdown(results: Results, plot_file: str | None = PLOT_FILE) -> str:
    meta = results["meta"]
    plan = results["plan"]
    out = [
        "# Benchmark report",
        "",
        f"Run {meta['date']} at commit `{meta['commit']}` on {meta['cores']} cores "
        f"({meta['cpu']}, {meta['memory_gib']} GiB), Linux {meta['kernel']}, "
        f"Python {meta['python']}. Load average {_load(meta.get('loadavg_start'))} at the start, "
        f"{_load(meta.get('loadavg_end'))} at the end. {plan['duration_s']:g} s per cell after "
        f"{plan['warmup_s']:g} s of warm-up; gRPC client `{plan['grpc_client']}` "
        f"({meta['h2load']}), REST client `{meta['wrk'].split(' Copyright')[0]}`. Server and "
        "client share the machine.",
        "",
        "## Goals",
        "",
    ]
    rows = []
    for goal in goals(results):
        verdict = {True: "**met**", False: "not met", None: NONE}[goal.met]
        ratio = NONE if goal.ratio is None else f"{goal.ratio:.2f}{TIMES}"
        rows.append([goal.goal, goal.target, ratio, verdict, goal.measured])
    out += _table(["goal", "target", "ratio", "verdict", "measured"], rows, "llrll")
    out += ["", "⚠ marks a cell with errors. CPU is in cores (CPU seconds per second).", ""]
    if plot_file:
        out += [f"![latency vs throughput]({plot_file})", ""]
    out += ["## gRPC, single-row iris LR (ModelInfer)", ""]
    out += _table(
        [
            "server",
            "c=1 req/s",
            "c=1 p50 ms",
            "c=16 req/s",
            "c=16 p99 ms",
            "c=64 req/s",
            "c=64 p50 ms",
            "c=64 p99 ms",
            "c=64 server CPU",
            "c=64 client CPU",
        ],
        _columns(
            results,
            [
                ("lr-c1", lambda c: _fmt(c["rps"])),
                ("lr-c1", lambda c: _fmt(c["p50_ms"])),
                ("lr-c16", lambda c: _fmt(c["rps"])),
                ("lr-c16", lambda c: _fmt(c["p99_ms"])),
                ("lr-c64", lambda c: _fmt(c["rps"])),
                ("lr-c64", lambda c: _fmt(c["p50_ms"])),
                ("lr-c64", lambda c: _fmt(c["p99_ms"])),
                ("lr-c64", _cores),
                ("lr-c64", lambda c: f"{c['client_cpu_s'] / c['elapsed_s']:.2f}"),
            ],
        ),
    )
    ceilings = results.get("ceilings", {})
    rf64 = ceilings.get("rf-64rows-fleet", {}).get("rows_per_s")
    rf1024 = ceilings.get("rf-1024rows-fleet", {}).get("rows_per_s")
    out += ["", "## gRPC, iris RF", ""]
    out += [
        "“Of in-process”: rows/s against onnxruntime in process on the fleet's CPUs, one thread "
        "per CPU, measured beside the cell. “Model's share of CPU”: onnxruntime's CPU per call "
        "in process over the server's CPU per call, which holds when other work takes part of "
        "the CPUs.",
        "",
    ]
    out += _table(
        [
            "server",
            "1 row c=64 req/s",
            "1 row c=64 p99 ms",
            "64 rows c=16 rows/s",
            "of in-process",
            "64 rows c=16 p99 ms",
            "64 rows server CPU",
            "1,024 rows c=16 rows/s",
            "of in-process",
            "1,024 rows c=16 p99 ms",
            "model's share of CPU (64 / 1,024 rows)",
        ],
        _columns(
            results,
            [
                ("rf-c64", lambda c: _fmt(c["rps"])),
                ("rf-c64", lambda c: _fmt(c["p99_ms"])),
                ("rf64rows-c16", lambda c: _fmt(c["rows_per_s"])),
                ("rf64rows-c16", lambda c: _share(c, rf64)),
                ("rf64rows-c16", lambda c: _fmt(c["p99_ms"])),
                ("rf64rows-c16", _cores),
                ("rf1024rows-c16", lambda c: _fmt(c["rows_per_s"])),
                ("rf1024rows-c16", lambda c: _share(c, rf1024)),
                ("rf1024rows-c16", lambda c: _fmt(c["p99_ms"])),
                ("rf64rows-c16", lambda c: _model_share(results, c["server"])),
            ],
        ),
    )
    out += [
        "",
        "## REST predict, single-row iris LR, c=64 (wrk)",
        "",
        f"The gateway forwards to {plan['replicas']} replicas in fleet mode (defaults, one CPU "
        "each) over one gRPC channel; MLServer answers on its own REST port "
        "(`/v2/models/<name>/infer`).",
        "",
    ]
    rest_rows = []
    for cell in results["cells"]:
        if cell["load"]["protocol"] != "rest":
            continue
        roles = ", ".join(
            f"{role} {cpu / cell['elapsed_s']:.2f}" for role, cpu in cell["server_cpu_s"].items()
        )
        # Two gateway cells: its own predict route, and the OIP one.
        oip = " via OIP `/v2/.../infer`" if cell["load"]["key"].startswith("oip-") else ""
        rest_rows.append(
            [
                label(cell["server"]) + oip,
                _fmt(cell["rps"]),
                _fmt(cell["p50_ms"]),
                _fmt(cell["p99_ms"]),
                str(cell["errors"]),
                roles,
                f"{cell['client_cpu_s'] / cell['elapsed_s']:.2f}",
            ]
        )
    out += _table(
        ["server", "req/s", "p50 ms", "p99 ms", "errors", "server CPU by process", "client CPU"],
        rest_rows,
    )
    out += _swap_section(results.get("swap"))
    out += many_models.section(results.get("models"))
    out += push_to_served.section(results.get("push"))
    if ceilings:
        out += ["", "## In-process onnxruntime (back-to-back calls)", ""]
        out += _table(
            ["call", "µs per call", "rows/s", "how"],
            [
                [
                    name,
                    f"{c['us_per_call']:.1f}",
                    _fmt(c["rows_per_s"]),
                    c.get("how", "one session, one thread"),
                ]
                for name, c in ceilings.items()
            ],
        )
    out += _profile_section(results)
    out += ["", "## Every cell", ""]
    out += _table(
        ["server", "load", "client", "req/s", "rows/s", "p50", "p90", "p99 ms", "errors",
         "server CPU s", "client CPU s"],
        [
            [
                label(c["server"]),
                c["load"]["key"],
                c["client"],
                _fmt(c["rps"]),
                _fmt(c["rows_per_s"]),
                _fmt(c["p50_ms"]),
                _fmt(c["p90_ms"]),
                _fmt(c["p99_ms"]),
                str(c["errors"]),
                " + ".join(f"{v:.1f}" for v in c["server_cpu_s"].values()),
                f"{c['client_cpu_s']:.1f}",
            ]
            for c in results["cells"]
        ],
    )  # fmt: skip
    for failure in results.get("failures", []):
        out += ["", f"**{label(failure['server'])} failed:** `{failure['error'][:500]}`"]
    return "\n".join(out) + "\n"


def _load(value: Any) -> str:
    return "/".join(f"{v:.1f}" for v in value) if value else "?"


def _swap_section(swap: dict | None) -> list[str]:
    if not swap:
        return []
    out = [
        "",
        f"## Version swaps under load ({swap['replicas']} replicas in fleet mode, Python grpc.aio "
        f"client, c={swap['concurrency']})",
        "",
    ]
    rows = []
    for name, phase in (("steady", swap["steady"]), ("during swaps", swap["during_swaps"])):
        versions = phase["versions_seen"]
        shown = f"{versions[0]}…{versions[-1]} ({len(versions)})" if len(versions) > 2 else (
            ", ".join(versions))  # fmt: skip
        rows.append(
            [
                name,
                f"{phase['seconds']:.1f}",
                _fmt(phase["rps"]),
                _fmt(phase["p50_ms"]),
                _fmt(phase["p99_ms"]),
                str(phase["errors"]),
                shown,
            ]
        )
    out += _table(["phase", "s", "req/s", "p50 ms", "p99 ms", "errors", "versions answered"], rows)
    rollout = swap["rollout_s"]
    out += [
        "",
        f"{swap['swaps']} rollouts (`set_desired` then `wait_for_rollout`, each a version not "
        f"loaded before): median {rollout['median']:.2f} s, slowest {rollout['max']:.2f} s.",
    ]
    return out


def _profile_section(results: Results) -> list[str]:
    profiles = []
    if "replica" in results.get("profile", {}):
        profiles.append(
            ("one replica (defaults) under gRPC LR c=64", results["profile"]["replica"])
        )
    for cell in results["cells"]:
        if "profile" in cell:
            profiles.append(("the gateway under REST c=64", cell["profile"]))
    out: list[str] = []
    for title, profile in profiles:
        out += ["", f"## Profile: {title} (py-spy --native)", ""]
        if "error" in profile:
            out.append(profile["error"])
            continue
        threads = ", ".join(f"{name} {share}%" for name, share in profile["threads"][:6])
        out += [
            f"{profile['samples']} samples of busy threads ({profile['waiting_samples']} of "
            f"threads waiting for work left out). By thread: {threads}.",
            "",
        ]
        leaves, own = profile["self"][:12], profile["own_code"][:12]
        rows = []
        for i in range(max(len(leaves), len(own))):
            leaf = (f"`{leaves[i][0]}`", f"{leaves[i][1]}%") if i < len(leaves) else ("", "")
            mine = (f"`{own[i][0]}`", f"{own[i][1]}%") if i < len(own) else ("", "")
            rows.append([*leaf, *mine])
        out += _table(["where the CPU was (leaf frame)", "%", "our code on the stack", "%"], rows)
    return out


def render_plot(results: Results, path: Path) -> Path | None:
    """p50 and p99 against req/s for single-row LR at c=1, 16, 64, one line per server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = []
    for server in _servers(results):
        cells = [c for key in LR_CURVE if (c := find(results, server, key)) is not None]
        if cells:
            series.append((server, cells))
    if not series:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 6), sharex=True)
    for ax, metric, title in ((axes[0], "p50_ms", "p50"), (axes[1], "p99_ms", "p99")):
        for server, cells in series:
            xs = [c["rps"] for c in cells]
            ys = [c[metric] for c in cells]
            style = "-o" if server.startswith("ours") else "--s"
            ax.plot(xs, ys, style, label=label(server))
            for cell, x, y in zip(cells, xs, ys, strict=True):
                ax.annotate(
                    f"c={cell['load']['concurrency']}", (x, y), fontsize=7,
                    textcoords="offset points", xytext=(3, 3),
                )  # fmt: skip
        ax.set_yscale("log")
        ax.set_xlabel("requests/s")
        ax.set_ylabel(f"{title} latency (ms)")
        ax.set_title(f"{title}: single-row iris LR, gRPC ModelInfer")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render(results: Results, directory: Path) -> tuple[Path, Path | None]:
    """Write report.md and the plot beside each other in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    plot = render_plot(results, directory / PLOT_FILE)
    report = directory / "report.md"
    report.write_text(render_markdown(results, PLOT_FILE if plot else None))
    return report, plot
