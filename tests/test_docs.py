"""The docs' line pointers name real code, and the README's two commands are the ones CI runs."""

import re
import subprocess
import sys

from conftest import ROOT


def test_doc_line_pointers_are_current():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "update_doc_lines.py"), "--check"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout


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
