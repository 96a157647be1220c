"""Rewrite the params reference table in README.md from the params schema.

Run after changing a key, a default or a help text in
``src/cifar_baselines/params.py``; ``tests/test_stage_declarations.py`` fails
while the README's copy is out of date.
"""

from pathlib import Path

from cifar_baselines.atomic import atomic_path
from cifar_baselines.params import reference_table

README = Path(__file__).resolve().parents[1] / "README.md"
START = "<!-- params-reference:start -->\n"
END = "<!-- params-reference:end -->"


def main() -> None:
    text = README.read_text(encoding="utf-8")
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    with atomic_path(README) as tmp:
        tmp.write_text(head + START + reference_table() + END + tail, encoding="utf-8")


if __name__ == "__main__":
    main()
