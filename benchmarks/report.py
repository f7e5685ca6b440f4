"""Turn runs/*/evaluations.csv into results tables (markdown) and learning curves (PNG).

    python benchmarks/report.py --runs-dir runs --out results/

Run directories are named ENV__ALGO__SEED (benchmark.py) or ENV__ALGO__SEED__TIME (a plain script run); runs of the same
(ALGO, ENV) are seeds of one cell. Writes OUT/results.md (one table of final scores and one of best scores, algorithm x
dataset, mean +- std over seeds with the seed count, and a total row; then the robust aggregates of Agarwal et al. 2021
computed by rliable: IQM per algorithm and the probability that --reference improves on each other algorithm, then each
pair of the others, with stratified-bootstrap CIs; then how each cell was run, from the runs' provenance.csv files that
benchmark.py writes: seeds, steps, wall time, processes per run, machine, torch, commit and command), OUT/curves.png
(one panel per dataset, one line per algorithm, mean and a +-std band over seeds) and OUT/profile.png (performance
profiles; removed when there are no robust aggregates).
"""

from __future__ import annotations

import csv
import math
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import tyro

PROTOCOL = (
    "Each evaluation runs the deterministic policy (tanh of the mean, or the deterministic actor) for the run's "
    "--eval-episodes episodes (default 10) and records the normalised score of the mean return, "
    "100 * (R - ref_min) / (ref_max - ref_min), or the raw mean return where the dataset has no reference scores. "
    "final = the last evaluation of a run, which the scripts run on --final-eval-episodes episodes (default 100) and "
    "mark final in evaluations.csv; best = the maximum over its evaluations (optimistic: it selects on the "
    "evaluation episodes). Cells give mean +- std (population std) over seeds, with the seed count."
)


@dataclass
class Args:
    runs_dir: str = "runs"
    """the directory holding one sub-directory per run"""
    out: str = "results"
    """where results.md, curves.png and profile.png are written"""
    algos: Optional[list[str]] = None
    """the tables' columns, in this order (default: every algorithm found); a missing cell shows as -"""
    env_ids: Optional[list[str]] = None
    """the tables' rows, in this order (default: every dataset found); a missing cell shows as -"""
    reference: str = "misa_continuous"
    """the algorithm whose probability of improving on each other one comes first (then every pair of the others)"""
    bootstrap_reps: int = 2000
    """bootstrap resamples for the robust aggregates' confidence intervals (fixed random state: reproducible)"""


def run_key(run_dir: Path) -> Optional[tuple[str, str, int]]:
    """(algo, env, seed) of a directory named ENV__ALGO__SEED[__TIME], else None."""
    parts = run_dir.name.split("__")
    if len(parts) < 3 or not parts[2].lstrip("-").isdigit():
        return None
    return parts[1], parts[0], int(parts[2])


def load_runs(runs_dir: Path, final_marks: Optional[dict] = None) -> dict[tuple[str, str], dict[int, list]]:
    """{(algo, env): {seed: [(step, score), ...]}}; the score is the normalised score, else the mean return.
    `final_marks`, if given, receives {(algo, env, seed): (episodes, marked final)} of each run's last row."""
    cells: dict = defaultdict(dict)
    for csv_path in sorted(runs_dir.glob("*/evaluations.csv")):
        key = run_key(csv_path.parent)
        if key is None:
            print(f"skipping {csv_path.parent.name}: not named ENV__ALGO__SEED", file=sys.stderr)
            continue
        algo, env, seed = key
        with open(csv_path) as f:
            rows = list(csv.DictReader(f))
        curve = [(int(r["step"]), float(r["normalized_score"] or r["mean_return"])) for r in rows]
        if curve:
            cells[(algo, env)][seed] = curve
            if final_marks is not None:  # runs written before the final column existed have neither field
                final_marks[(algo, env, seed)] = (rows[-1].get("episodes") or "?", rows[-1].get("final") == "1")
    return cells


def summarize(cells):
    """{(algo, env): {"final": [per-seed], "best": [per-seed], "seeds": [...]}}."""
    out = {}
    for key, seeds in cells.items():
        order = sorted(seeds)
        out[key] = {"seeds": order, "final": [seeds[s][-1][1] for s in order],
                    "best": [max(v for _, v in seeds[s]) for s in order]}
    return out


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{np.mean(values):.1f} ± {np.std(values):.1f} ({len(values)})"


def table(summary, algos, envs, which: str) -> str:
    lines = ["| dataset | " + " | ".join(algos) + " |", "|---" * (len(algos) + 1) + "|"]
    for env in envs:
        lines.append(f"| {env} | " + " | ".join(fmt(summary[(a, env)][which]) if (a, env) in summary else "-"
                                                for a in algos) + " |")
    totals = []
    for algo in algos:
        if not all((algo, env) in summary for env in envs):
            totals.append("-")
            continue
        # per-seed totals over the seeds every dataset has; the mean of the total is the sum of the means either way
        common = set.intersection(*(set(summary[(algo, env)]["seeds"]) for env in envs))
        per_seed = [sum(summary[(algo, env)][which][summary[(algo, env)]["seeds"].index(s)] for env in envs)
                    for s in sorted(common)]
        mean_total = sum(np.mean(summary[(algo, env)][which]) for env in envs)
        totals.append(f"{mean_total:.1f} ± {np.std(per_seed):.1f} ({len(per_seed)})" if per_seed else f"{mean_total:.1f}")
    lines.append("| **total** | " + " | ".join(totals) + " |")
    return "\n".join(lines)


def load_provenance(runs_dir: Path) -> dict[tuple[str, str, int], list[dict]]:
    """{(algo, env, seed): the rows of the run's provenance.csv (one per process that trained it)}."""
    out = {}
    for path in sorted(runs_dir.glob("*/provenance.csv")):
        key = run_key(path.parent)
        if key is not None:
            with open(path) as f:
                out[key] = list(csv.DictReader(f))
    return out


def processes_of(rows: list[dict]) -> str:
    """How many processes trained a run, and how many of them did not finish (an exit code other than 0: failed,
    stopped, or killed with their session, whose row benchmark.py leaves with an empty exit code)."""
    unfinished = sum(row["exit_code"] != "0" for row in rows)
    return f"{len(rows)}" + (f" ({unfinished} did not finish)" if unfinished else "")


def provenance_table(cells, provenance, algos, envs) -> str:
    """How each cell was run: its seeds, the step of the last evaluation, the wall time per run (the sum over the
    processes that trained it, including failed tries; seeds trained in one process share its time), how many
    processes trained each run (more than one: it was continued from a checkpoint or retried; those that did not
    finish are counted), the machine, torch and commit, the build of the data (recorded since benchmark.py names it;
    "-" before), then each cell's command (of its first seed)."""
    lines = ["| algorithm | dataset | seeds | steps | wall time per run | processes per run | seeds per process | machine "
             "| torch | commit | build of the data |", "|---" * 11 + "|"]
    commands = []

    def values(rows, field):
        return "; ".join(sorted({r.get(field) or "" for r in rows} - {""})) or "-"

    for algo in algos:
        for env in envs:
            seeds = cells.get((algo, env))
            if not seeds:
                continue
            rows = {s: provenance.get((algo, env, s), []) for s in sorted(seeds)}
            recorded = [s for s in rows if rows[s]]
            every = [r for s in recorded for r in rows[s]]
            steps = ", ".join(str(v) for v in sorted({curve[-1][0] for curve in seeds.values()}))
            wall = (f"{np.mean([sum(float(r['wall_s']) for r in rows[s]) for s in recorded]) / 60:.1f} min"
                    if recorded else "-")
            if len(recorded) < len(rows):
                wall += f" (not recorded for seed {', '.join(str(s) for s in rows if not rows[s])})"
            # a full git hash is shortened to 10 characters; "+local-changes" and hand-named commits stay as written
            commit = "; ".join(sorted({re.sub(r"^([0-9a-f]{10})[0-9a-f]{30}", r"\1", r["commit"]) for r in every})) or "-"
            processes = "; ".join(sorted({processes_of(rows[s]) for s in recorded})) or "-"
            lines.append(f"| {algo} | {env} | {', '.join(str(s) for s in rows)} | {steps} | {wall} | {processes} | "
                         f"{values(every, 'seeds_in_process')} | {values(every, 'machine')} | "
                         f"{values(every, 'torch')} | {commit} | {values(every, 'dataset')} |")
            if recorded:
                commands.append(f"- {algo}, {env}: `{rows[recorded[0]][0]['command']}`")
    text = "\n".join(lines)
    if commands:
        text += "\n\nCommands (each cell's first seed; `benchmark.py` passes the other seeds the same way):\n\n"
        text += "\n".join(commands)
    return text


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def robust_aggregates(summary, algos, envs, reference: str, reps: int, profile_path: Path) -> str:
    """Agarwal et al. (2021): the interquartile mean of final scores per algorithm and the probability that `reference`
    improves on each other algorithm (then that each other algorithm improves on those after it in `algos`), with
    stratified-bootstrap 95% CIs (seeds resampled within each dataset), and a performance-profile plot; computed by
    rliable."""

    from rliable import library as rly
    from rliable import metrics, plot_utils

    usable = [a for a in algos if all((a, e) in summary for e in envs)]
    if not usable:
        return "No algorithm has results on every dataset: robust aggregates skipped."
    n = min(len(summary[(a, e)]["final"]) for a in usable for e in envs)
    scores = {a: np.array([[summary[(a, e)]["final"][i] for e in envs] for i in range(n)]) for a in usable}
    # rliable 1.2's bootstraps draw from numpy's global generator whatever random_state they are given, so each
    # estimate seeds it: the same runs give the same table
    np.random.seed(0)
    iqm, iqm_ci = rly.get_interval_estimates(scores, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=reps)
    lines = [f"Final scores of {n} seeds on each of {len(envs)} datasets (the first {n} seeds of each cell where cells "
             f"differ); 95% stratified-bootstrap confidence intervals, {reps} resamples.", "",
             "| algorithm | IQM [95% CI] |", "|---|---|"]
    lines += [f"| {a} | {iqm[a][0]:.1f} [{iqm_ci[a][0][0]:.1f}, {iqm_ci[a][1][0]:.1f}] |" for a in usable]
    others = [a for a in usable if a != reference]
    # the reference against each other algorithm, then every pair of the others (in the order of `algos`)
    ordered = [(reference, b) for b in others] if reference in usable else []
    ordered += [(a, b) for i, a in enumerate(others) for b in others[i + 1:]]
    if ordered:
        pairs = {f"{a} > {b}": (scores[a], scores[b]) for a, b in ordered}
        np.random.seed(0)
        poi, poi_ci = rly.get_interval_estimates(pairs, metrics.probability_of_improvement, reps=reps)
        lines += ["", "| probability of improvement | P [95% CI] |", "|---|---|"]
        lines += [f"| P({k}) | {float(poi[k]):.2f} [{poi_ci[k][0].item():.2f}, {poi_ci[k][1].item():.2f}] |"
                  for k in pairs]
    plt = pyplot()
    taus = np.linspace(min(0.0, min(v.min() for v in scores.values())), max(v.max() for v in scores.values()), 101)
    np.random.seed(0)
    profiles, profile_cis = rly.create_performance_profile(scores, taus, reps=reps)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    plot_utils.plot_performance_profiles(profiles, taus, performance_profile_cis=profile_cis, ax=ax,
                                         colors={a: f"C{algos.index(a)}" for a in usable},
                                         xlabel="normalised score (τ)", ylabel="fraction of runs with score > τ")
    ax.legend([plt.Line2D([], [], color=f"C{algos.index(a)}") for a in usable], usable, fontsize=8)
    fig.tight_layout()
    fig.savefig(profile_path, dpi=120)
    plt.close(fig)
    return "\n".join(lines + ["", f"![performance profile]({profile_path.name})"])


def plot(cells, algos, envs, path: Path) -> None:
    plt = pyplot()

    cols = min(3, len(envs))
    rows = math.ceil(len(envs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, env in zip(axes.flat, envs):
        for algo in algos:
            seeds = cells.get((algo, env))
            if not seeds:
                continue
            steps = sorted(set.intersection(*(set(s for s, _ in curve) for curve in seeds.values())))
            values = np.array([[dict(curve)[s] for s in steps] for curve in seeds.values()])
            mean, std = values.mean(0), values.std(0)
            color = f"C{algos.index(algo)}"  # one colour per algorithm in every panel
            ax.plot(steps, mean, label=f"{algo} ({len(seeds)})", color=color)
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2, color=color)
        ax.set_title(env)
        if not ax.lines:  # a dataset pinned with --env-ids may have no runs yet
            ax.text(0.5, 0.5, "no runs yet", ha="center", va="center", color="0.5", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        ax.set_xlabel("gradient steps")
        ax.set_ylabel("normalised score")
        # 300000 as 300k: full step counts run into each other under a 5-inch panel
        ax.xaxis.set_major_formatter(lambda x, _: f"{x / 1000:g}k" if abs(x) >= 1000 else f"{x:g}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(envs):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args: Args) -> int:
    marks: dict = {}
    cells = load_runs(Path(args.runs_dir), marks)
    if not cells:
        print(f"error: no runs/*/evaluations.csv under {args.runs_dir}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"error: --out {out} is a file, not a directory", file=sys.stderr)
        return 2
    summary = summarize(cells)
    found_algos, found_envs = {a for a, _ in cells}, {e for _, e in cells}
    algos = args.algos or sorted(found_algos)
    envs = args.env_ids or sorted(found_envs)
    for flag, named, found in (("--algos", algos, found_algos), ("--env-ids", envs, found_envs)):
        if missing := [name for name in named if name not in found]:  # a typo, or a column still to be filled
            print(f"note: no runs of {', '.join(missing)} ({flag}) under {args.runs_dir}, so they show as -; runs found "
                  f"there: {', '.join(sorted(found))}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.png").unlink(missing_ok=True)  # an earlier report's plot must not sit beside tables without one
    marked = sum(final for _, final in marks.values())
    episodes = sorted({str(n) for n, _ in marks.values()})
    final_note = (f"{marked} of {len(marks)} runs end with an evaluation marked final; last evaluations ran "
                  f"{' or '.join(episodes)} episodes.")
    text = (f"# Results\n\n{PROTOCOL}\n\n## Final score (last evaluation)\n\n{final_note}\n\n"
            f"{table(summary, algos, envs, 'final')}\n\n"
            f"## Best score (maximum over evaluations)\n\n{table(summary, algos, envs, 'best')}\n\n"
            f"![learning curves](curves.png)\n\n## Robust aggregates (final scores)\n\n"
            f"{robust_aggregates(summary, algos, envs, args.reference, args.bootstrap_reps, out / 'profile.png')}\n\n"
            f"## How each cell was run\n\n{provenance_table(cells, load_provenance(Path(args.runs_dir)), algos, envs)}\n")
    (out / "results.md").write_text(text)
    plot(cells, algos, envs, out / "curves.png")
    print(text)
    written = [out / name for name in ("results.md", "curves.png", "profile.png") if (out / name).exists()]
    print(f"wrote {', '.join(map(str, written))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args)))
