"""The docs' line pointers name real code, and the README's two commands are the ones CI runs."""

import subprocess
import sys

from conftest import ROOT


def test_doc_line_pointers_are_current():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "update_doc_lines.py"), "--check"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout


def test_ci_runs_the_readme_test_command():
    readme, ci = (ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()
    test_command = "python3 -m pip install -r requirements.txt && python3 -m pytest tests -q"
    assert test_command in readme and test_command in ci
