"""Keep the line pointers in docs/*.md true: each pointer is written as

    `code fragment` ([L123](../path/to/script.py#L123))

and this tool rewrites 123 to the first line of the script that contains the fragment. Run it after editing a
script; tests/test_docs.py fails when a pointer is stale or its fragment is gone.

    python tools/update_doc_lines.py            # rewrite docs/*.md in place
    python tools/update_doc_lines.py --check    # exit 1 if anything would change
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POINTER = re.compile(r"`([^`]+)`(\s+)\(\[L(\d+)\]\(\.\./([^#)]+)#L(\d+)\)\)")  # a line break may separate them


def fix(text: str) -> tuple[str, list[str]]:
    problems = []

    def repl(m: re.Match) -> str:
        fragment, space, path = m.group(1), m.group(2), m.group(4)
        lines = (ROOT / path).read_text().splitlines()
        hits = [i + 1 for i, line in enumerate(lines) if fragment in line]
        if not hits:
            problems.append(f"{path}: no line contains {fragment!r}")
            return m.group(0)
        return f"`{fragment}`{space}([L{hits[0]}](../{path}#L{hits[0]}))"

    return POINTER.sub(repl, text), problems


def main() -> int:
    check = "--check" in sys.argv
    status = 0
    for doc in sorted((ROOT / "docs").glob("*.md")):
        text = doc.read_text()
        new, problems = fix(text)
        for p in problems:
            print(f"{doc.name}: {p}")
            status = 1
        if new != text:
            if check:
                print(f"{doc.name}: stale line pointers (run python tools/update_doc_lines.py)")
                status = 1
            else:
                doc.write_text(new)
    return status


if __name__ == "__main__":
    sys.exit(main())
