"""Put two runs side by side: every logged scalar and every evaluation, run A against run B.

    python benchmarks/compare_runs.py runs/fp32 runs/tf32
    python benchmarks/compare_runs.py runs/fp32 runs/tf32 --last 5 --out tf32_ablation.md

For ablations that change how a step computes but should not change what it learns, such as TF32 matrix products
against full FP32 (`--tf32`): train the same seed twice, then compare. For each TensorBoard scalar both runs logged
(losses, the MI estimate, MISA's HMC acceptance rate and step size, ...) the table gives the mean over each run's
last --last logged values and the difference relative to A; then both runs' evaluations.csv rows step by step. Prints
a markdown report; --out also writes it to a file.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import tyro


@dataclass
class Args:
    run_a: tyro.conf.Positional[Annotated[str, tyro.conf.arg(metavar="RUN_A")]]
    """run directory A (runs/<run_name>: TensorBoard events and evaluations.csv)"""
    run_b: tyro.conf.Positional[Annotated[str, tyro.conf.arg(metavar="RUN_B")]]
    """run directory B"""
    last: int = 5
    """average each scalar over the last this many logged values of each run"""
    out: Optional[str] = None
    """also write the markdown report to this path"""


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0: keep every value
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def evaluations(run_dir: Path) -> dict[int, dict[str, str]]:
    path = run_dir / "evaluations.csv"
    if not path.is_file():
        return {}
    with open(path) as f:
        return {int(row["step"]): row for row in csv.DictReader(f)}


def report(a: Path, b: Path, last: int) -> str:
    sa, sb = scalars(a), scalars(b)
    ea, eb = evaluations(a), evaluations(b)
    if not (set(sa) & set(sb) or ea or eb):
        sys.exit(f"error: {a} and {b} share no TensorBoard scalar, and neither has an evaluations.csv")
    lines = [f"A: `{a}`  \nB: `{b}`\n", f"| scalar | steps (A / B) | A, mean of last {last} | B, mean of last {last} "
             "| (B - A) / abs(A) |", "|---|---|---|---|---|"]
    for tag in sorted(set(sa) & set(sb)):
        va, vb = [v for _, v in sa[tag][-last:]], [v for _, v in sb[tag][-last:]]
        ma, mb = sum(va) / len(va), sum(vb) / len(vb)
        rel = f"{(mb - ma) / abs(ma):+.2%}" if ma != 0 else "n/a"
        lines.append(f"| {tag} | {sa[tag][-1][0]} / {sb[tag][-1][0]} | {ma:.6g} | {mb:.6g} | {rel} |")
    only = sorted(set(sa) ^ set(sb))
    if only:
        lines.append(f"\nLogged by one run only: {', '.join(only)}")
    if ea or eb:
        lines += ["", "| step | A score | B score | episodes (A / B) |", "|---|---|---|---|"]
        for step in sorted(set(ea) | set(eb)):
            ra, rb = ea.get(step, {}), eb.get(step, {})
            score = lambda r: r.get("normalized_score") or r.get("mean_return") or "-"  # noqa: E731
            lines.append(f"| {step} | {score(ra)} | {score(rb)} | {ra.get('episodes', '-')} / {rb.get('episodes', '-')} |")
    return "\n".join(lines) + "\n"


def main(args: Args) -> None:
    a, b = Path(args.run_a), Path(args.run_b)
    for run in (a, b):
        if not run.is_dir() or not ((run / "evaluations.csv").is_file() or any(run.glob("events.out.tfevents.*"))):
            sys.exit(f"error: {run} is not a run directory (no evaluations.csv, no TensorBoard events)")
    text = report(a, b, args.last)
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main(tyro.cli(Args))
