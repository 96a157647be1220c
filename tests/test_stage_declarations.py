"""``dvc.yaml`` declares exactly what each stage script reads.

A stage script names the params keys it reads in a module-level ``KEYS`` list
and passes it to ``load_params``, which returns those keys only: reading an
undeclared key fails at run time.  These tests close the loop statically:
``KEYS`` equals the stage's ``params:`` in ``dvc.yaml``, every key in ``KEYS``
is read by the script (by name, or as part of a section passed on whole with
``**``), and the script and the library modules it imports are
listed as dependencies.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from cifar_baselines.params import SCHEMA

REPO = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]

# Modules the stages use for plumbing (reading params, logging, writing files
# atomically, letting OpenBLAS's idle threads sleep).  They change how a stage
# runs or reports, never what it computes, so listing them as dependencies would
# only make every stage re-run when, say, the log format changes.
PLUMBING = {"params", "stage", "atomic", "errors", "blas_threads"}


def declared_params(stage: dict) -> set[str]:
    """Params keys of one ``dvc.yaml`` stage, with whole sections expanded."""
    keys: set[str] = set()
    for entry in stage.get("params", []):
        assert isinstance(entry, str), f"params from another file: {entry!r}"
        if "." in entry:
            keys.add(entry)
        else:
            keys.update(f"{entry}.{name}" for name in SCHEMA[entry])
    return keys


def script_of(stage: dict) -> Path:
    cmd = stage["cmd"].split()
    assert cmd[:2] == ["python", cmd[1]] and cmd[1].startswith("stages/"), cmd
    return REPO / cmd[1]


def module_keys(tree: ast.Module) -> list[str] | None:
    """The literal value of a module-level ``KEYS = [...]``, if there is one."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "KEYS" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    return None


def subscripted_names(tree: ast.Module) -> set[str]:
    """Every string constant used as a subscript, as in ``params["seed"]``."""
    return {
        node.slice.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Subscript)
        and isinstance(node.slice, ast.Constant)
        and isinstance(node.slice.value, str)
    }


def unpacked_sections(tree: ast.Module) -> set[str]:
    """Sections passed on whole: ``s = params["mlp"]``, then ``f(**s)``.

    Such a call hands every key of the section to its callee (``load_params``
    returns the declared keys only), so each of them counts as read.
    """
    section_of: dict[str, str] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        target, value = node.targets[0], node.value
        pairs = (
            zip(target.elts, value.elts, strict=True)
            if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple)
            else [(target, value)]
        )
        for name, source in pairs:
            if (
                isinstance(name, ast.Name)
                and isinstance(source, ast.Subscript)
                and isinstance(source.slice, ast.Constant)
                and source.slice.value in SCHEMA
            ):
                section_of[name.id] = source.slice.value
    passed: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.keyword) or node.arg is not None:
            continue
        # f(**s), or f(**{**s, "key": value}) to replace some of its keys.
        names = [node.value]
        if isinstance(node.value, ast.Dict):
            entries = zip(node.value.keys, node.value.values, strict=True)
            names = [value for key, value in entries if key is None]
        passed.update(
            section_of[n.id]
            for n in names
            if isinstance(n, ast.Name) and n.id in section_of
        )
    return passed


def imported_library_modules(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "cifar_baselines":
                names.update(alias.name for alias in node.names)
            elif node.module.startswith("cifar_baselines."):
                names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("cifar_baselines."):
                    names.add(alias.name.split(".")[1])
    return names


@pytest.mark.parametrize("name", sorted(STAGES))
def test_params_declared_are_the_params_read(name):
    stage = STAGES[name]
    tree = ast.parse(script_of(stage).read_text(encoding="utf-8"))

    keys = module_keys(tree) or []
    assert set(keys) == declared_params(stage), (
        f"stage {name}: the script's KEYS and dvc.yaml's params differ"
    )
    read, whole = subscripted_names(tree), unpacked_sections(tree)
    unread = [
        key
        for key in keys
        if key.partition(".")[2] not in read and key.partition(".")[0] not in whole
    ]
    assert not unread, f"stage {name} declares but never reads {unread}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_script_and_library_modules_are_dependencies(name):
    stage = STAGES[name]
    script = script_of(stage)
    tree = ast.parse(script.read_text(encoding="utf-8"))
    deps = set(stage.get("deps", []))

    assert str(script.relative_to(REPO)) in deps
    for module in imported_library_modules(tree) - PLUMBING:
        assert f"src/cifar_baselines/{module}.py" in deps, (
            f"stage {name} imports cifar_baselines.{module} but does not depend on it"
        )


def test_params_file_holds_the_documented_defaults():
    from cifar_baselines.params import defaults

    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    assert params == defaults()


def test_readme_params_reference_is_current():
    from cifar_baselines.params import reference_table

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index("<!-- params-reference:start -->")
    stop = readme.index("<!-- params-reference:end -->")
    assert readme[start:stop].split("\n", 1)[1].strip() == reference_table().strip()


def test_a_section_counts_as_read_only_when_passed_on_whole():
    passed = unpacked_sections(
        ast.parse(
            'a, b = params["cv"], params["mlp"]\n'
            'c = params["knn"]\n'
            'f(**{**b, "seed": 1})\n'
            "g(a)\n"
            "h(**c)\n"
        )
    )
    assert passed == {"mlp", "knn"}
