"""The one smoke-size run of every benchmark that the bench tests read."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.__main__ import main as bench_main


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m bench --preset smoke`` once (into a temporary directory, never over
    ``bench/results``): the directory holding what every benchmark wrote."""
    root = tmp_path_factory.mktemp("bench")
    code = bench_main(
        [
            "--preset",
            "smoke",
            "--out",
            str(root / "results"),
            "--work",
            str(root / "work"),
            "--profiles",
            str(root / "profiles"),
            "--results-md",
            str(root / "RESULTS.md"),
            "--plot",
            str(root / "dispatch.png"),
        ]
    )
    assert code == 0, "a benchmark failed (its traceback is in the captured stderr)"
    return root
