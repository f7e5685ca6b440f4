"""The docs' line pointers name real code, the README's two commands are the ones CI runs, every flag has one
paragraph of help, and the committed results tables are what the committed runs give."""

import ast
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, load_script


def test_doc_line_pointers_are_current():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "update_doc_lines.py"), "--check"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout


# every Python file of the project outside tests/; those without an Args class have no command-line flags to check
ENTRY_POINTS = sorted(p.relative_to(ROOT) for d in ("", "baselines", "tools", "benchmarks") for p in (ROOT / d).glob("*.py"))


def test_every_flag_has_a_one_paragraph_docstring():
    """Every field of every command line's Args has a docstring (tyro's --help text for it), and each is one string
    without line breaks: tyro 1.0 keeps every line break of an indented multi-line docstring in --help, so a long
    docstring is written as adjacent string literals in parentheses, which Python joins into one."""
    checked = 0
    for path in ENTRY_POINTS:
        tree = ast.parse((ROOT / path).read_text())
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "Args"):
            body = cls.body
            for i, stmt in enumerate(body):
                if isinstance(stmt, ast.AnnAssign):
                    doc = body[i + 1] if i + 1 < len(body) else None
                    name = f"{path}: Args.{stmt.target.id}"
                    assert isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant), f"{name} has no docstring"
                    assert "\n" not in doc.value.value, f"{name}: its docstring spans lines; see this test's docstring"
                    checked += 1
    assert checked > 250  # every entry point was read


def test_ci_runs_the_readme_test_command_in_a_fresh_virtual_environment():
    readme, ci = (ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    test_command = next(b for b in blocks if "pytest" in b and "benchmark" not in b)
    assert test_command.startswith("python3 -m venv .venv && ") and "-c constraints.txt" in test_command
    assert test_command in ci.splitlines()  # verbatim, as one line of .ci/run
    assert "rm -rf .venv" in ci  # and never on top of an environment left from before
    main_command = blocks[0]
    assert main_command.startswith("python3 -m venv .venv && ") and "misa_continuous.py" in main_command


def test_constraints_pin_every_requirement():
    """Every package the project asks for is pinned in constraints.txt, so a fresh install gets tested versions."""
    def names(path):
        out = set()
        for line in (ROOT / path).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line:
                out.add(re.split(r"[\[<>=!~; ]", line, maxsplit=1)[0].lower().replace("_", "-"))
        return out

    pinned = names("constraints.txt")
    assert names("requirements.txt") <= pinned
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        assert not line or "==" in line, line


def test_the_committed_results_table_is_what_report_py_makes_of_the_committed_runs(tmp_path):
    """docs/results/results.md is rebuilt exactly by the command docs/results.md gives, from docs/results/runs/."""
    page = (ROOT / "docs" / "results.md").read_text()
    (block,) = [b for b in re.findall(r"```bash\n(.*?)\n```", page, re.S) if "--runs-dir docs/results/runs" in b]
    argv = shlex.split(block.replace("\\\n", " "))
    assert argv[:2] == ["python", "benchmarks/report.py"] and argv[argv.index("--out") + 1] == "docs/results"
    argv[argv.index("--out") + 1] = str(tmp_path)
    r = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "results.md").read_text() == (ROOT / "docs" / "results" / "results.md").read_text()


@pytest.mark.parametrize("page", ["README.md", "docs/results.md"])
def test_the_pages_show_the_committed_final_score_table(page):
    """README.md and docs/results.md open their results with the final-score table of docs/results/results.md, line for
    line, so that the numbers a reader sees first cannot fall behind the committed runs."""
    report = (ROOT / "docs" / "results" / "results.md").read_text()
    section = report.split("## Final score (last evaluation)", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("|")]
    lines = (ROOT / page).read_text().splitlines()
    assert len(table) == 12 and table[0] in lines  # the header, the rule, nine datasets, the total
    start = lines.index(table[0])
    assert lines[start:start + len(table)] == table


def test_the_dataset_by_dataset_table_is_what_the_committed_runs_give():
    """docs/results.md's table of TD3+BC against IQL per dataset (data's mean, finals, seed pairs won, mean evaluation
    from 100k to 290k steps) is recomputed from docs/results/runs/, so that it cannot fall behind the committed runs."""
    page = (ROOT / "docs" / "results.md").read_text()
    section = page.split("### What the table says, dataset by dataset", 1)[1].split("\n### ", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("|")]
    assert rows[0][0] == "dataset" and len(rows) == 11  # the header, the rule, nine datasets
    ref_scores = load_script(ROOT / "misa_continuous.py").D4RL_REF_SCORES
    report, runs, final_marks = load_script(ROOT / "benchmarks" / "report.py"), ROOT / "docs" / "results" / "runs", {}
    curves, provenance = report.load_runs(runs, final_marks), report.load_provenance(runs)

    def cell(env, algo):  # per seed: the final score and the mean evaluation from 100k on; the data's mean returns
        seeds = sorted(curves[(algo, env)])
        assert all(final_marks[(algo, env, seed)][1] for seed in seeds)  # every run ends on its final evaluation
        finals = [curves[(algo, env)][seed][-1][1] for seed in seeds]
        late = [np.mean([v for step, v in curves[(algo, env)][seed][:-1] if step >= 100_000]) for seed in seeds]
        data_means = {float(re.search(r"mean return (-?[\d.]+)", row["dataset"]).group(1))
                      for seed in seeds for row in provenance[(algo, env, seed)] if row.get("dataset")}
        return finals, late, data_means

    for dataset, data_mean, td3_final, iql_final, pairs, evaluations in rows[2:]:
        td3, td3_late, td3_data = cell(dataset, "td3_bc_continuous")
        iql, iql_late, iql_data = cell(dataset, "iql_continuous")
        assert len(td3) == len(iql) == 5
        (mean_return,) = td3_data | iql_data  # every run that recorded its data read the same build
        low, high = ref_scores[dataset.split("-")[0]]
        assert data_mean == f"{100 * (mean_return - low) / (high - low):.1f}", dataset
        for shown, finals in ((td3_final, td3), (iql_final, iql)):  # mean ± std over seeds, as report.py writes them
            assert shown == f"{np.mean(finals):.1f} ± {np.std(finals):.1f}", dataset
        assert pairs == str(sum(a > b for a in td3 for b in iql)), dataset
        assert evaluations == f"{np.mean(td3_late):.1f}, {np.mean(iql_late):.1f}", dataset
