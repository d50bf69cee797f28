"""CPU smoke test of the one-process accelerator benchmark (`experiments/benchmarks/accelerator`).

The tiny run times nothing meaningful; it checks that every section runs on whatever backend is
present, in one process, and fills its rows with finite numbers.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.benchmarks import accelerator

ROOT = Path(__file__).resolve().parents[1]


def _finite_positive(x: float | None) -> bool:
    return x is not None and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_tiny_run_fills_every_row(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.benchmarks.accelerator",
            "--size=tiny",
            "--budget_s=900",
            f"--out={out}",
        ],
        cwd=ROOT,  # XLA_FLAGS: tests/conftest.py's FAST_COMPILE (the run checks rows, not speed)
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "devices: [" in proc.stdout and "device kind: " in proc.stdout
    assert "load average at start" in proc.stdout and "load average at end" in proc.stdout

    result = json.loads((out / "accelerator.json").read_text())
    rows = result["rows"]
    assert list(dict.fromkeys(r["section"] for r in rows)) == list(accelerator.SECTIONS)
    assert result["failed"] == [] and set(result["section_s"]) == set(accelerator.SECTIONS)
    for r in rows:
        assert not r["note"].startswith(("skipped", "failed")), r
        assert _finite_positive(r["value"]), r
        assert r["ratio"] is None or _finite_positive(r["ratio"]), r
    with_ratio = {r["section"] for r in rows if r["ratio"] is not None}
    assert with_ratio == set(accelerator.SECTIONS) - {"matmul"}
    assert len([r for r in rows if r["section"] == "matmul"]) == 2  # float32 and bfloat16

    table = (out / "accelerator.md").read_text()
    assert table.count("\n| ") == len(rows) + 2  # header, separator, one line per row
    assert table.split("\n\n", 1)[1] in proc.stdout


def test_sections_over_budget_are_skipped_with_the_reason(tmp_path, capsys):
    result = accelerator.run("tiny", budget_s=0.0, out=str(tmp_path))
    rows = result["rows"]
    assert [r["section"] for r in rows] == list(accelerator.SECTIONS)
    assert all(r["note"].startswith("skipped: planned") and r["value"] is None for r in rows)
    assert result["section_s"] == {} and result["failed"] == []
    assert "skipped: planned" in (tmp_path / "accelerator.md").read_text()
    assert "load average at start" in capsys.readouterr().out
