"""Each package has an explicit, sorted ``__all__`` (import rules: test_import_rules.py)."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("package", ["broker", "sideband", "emulator", "broker_client"])
def test_all_is_sorted_and_importable(package: str) -> None:
    module = importlib.import_module(package)
    names = module.__all__
    assert names == sorted(names)
    for name in names:
        assert hasattr(module, name), f"{package}.{name} is in __all__ but missing"
