"""Every command-line front answers --help quickly and turns bad input into one line and exit 2."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ["run_pretrain.py", "run_finetune.py", "run_generate.py", "run_languagemodel.py", "encode_swe.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_is_fast_and_documents_defaults(script):
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and "--" in result.stdout
    assert elapsed < 8.0, f"{script} --help took {elapsed:.1f} s"


@pytest.mark.parametrize("script", ["run_pretrain.py", "run_generate.py"])
def test_missing_required_flag_is_one_line_exit_2(script):
    result = subprocess.run([sys.executable, str(REPO / script)], capture_output=True, text=True, cwd=REPO,
                            timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "required" in result.stderr
