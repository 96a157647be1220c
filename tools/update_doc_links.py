"""Re-point the line links of docs/backprop.md after the code they quote moved.

Each link reads ``[`code`](../path#L<n>)``; line ``n`` of ``path`` must hold
``code`` (``tests/test_mlp.py`` checks it).  This script finds the line that
holds the quoted code now and rewrites ``n``.  A name quoted on several lines
goes to the line that defines it (``def name(`` or ``class name``), else to
the line nearest the old one.  A quote found on no line is reported and left
as it is: the link needs a human.
"""

import re
import sys
from pathlib import Path

from cifar_baselines.atomic import atomic_path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "backprop.md"
LINK = re.compile(r"\[`([^`]+)`\]\(\.\./([^)#]+)#L(\d+)\)")


def main() -> int:
    text = DOC.read_text(encoding="utf-8")
    sources: dict[str, list[str]] = {}
    unresolved = []

    def repoint(match: re.Match[str]) -> str:
        code, path, line = match.groups()
        if path not in sources:
            sources[path] = (REPO / path).read_text(encoding="utf-8").splitlines()
        lines = sources[path]
        found = [i + 1 for i, text in enumerate(lines) if code in text]
        if not found:
            unresolved.append(f"{path}: {code!r} is on no line")
            return match.group(0)
        defining = [
            n
            for n in found
            if lines[n - 1].lstrip().startswith((f"def {code}(", f"class {code}"))
        ]
        best = min(defining or found, key=lambda n: abs(n - int(line)))
        return match.group(0).replace(f"#L{line})", f"#L{best})")

    updated = LINK.sub(repoint, text)
    if updated != text:
        with atomic_path(DOC) as tmp:
            tmp.write_text(updated, encoding="utf-8")
    for problem in unresolved:
        print(f"update_doc_links: left as is: {problem}", file=sys.stderr)
    return 1 if unresolved else 0


if __name__ == "__main__":
    sys.exit(main())
