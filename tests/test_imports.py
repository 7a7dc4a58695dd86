"""Dependencies run one way: the library in modeling/ never imports a command-line script of the top level."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = frozenset(path.stem for path in REPO.glob("*.py"))
LIBRARY = sorted((REPO / "modeling").glob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module `path` imports, anywhere in the file (functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_scripts_are_known():
    assert {"encode_swe", "run_pretrain", "run_finetune", "run_generate", "run_languagemodel"} <= SCRIPTS
    assert len(LIBRARY) > 10


@pytest.mark.parametrize("path", LIBRARY, ids=lambda path: path.name)
def test_library_module_imports_no_script(path):
    assert not imported_modules(path) & SCRIPTS


def test_the_walk_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from encode_swe import SWEEncoder\n    import run_generate.x\n")
    assert imported_modules(sample) == {"encode_swe", "run_generate"}


def test_encode_swe_still_exports_the_encoder():
    from encode_swe import SWEEncoder
    from modeling.tokenizer import SWEEncoder as LibraryEncoder

    assert SWEEncoder is LibraryEncoder
