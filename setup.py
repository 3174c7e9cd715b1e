"""The one build step pyproject.toml cannot declare: ``web/`` into the wheel as ``broker/web/``.

``web/`` stays the browser files' only source, at the top of the repository where its
``package.json`` and tools expect it; the wheel gets a copy as package data so that an
installed broker finds it (broker/api/web_files.py). Everything else is in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

WEB_SOURCE = Path(__file__).resolve().parent / "web"
SKIPPED = shutil.ignore_patterns("node_modules", ".*", "package-lock.json", "__pycache__")
"""Development files: dependencies, dotfiles and the lock file are not served."""


class BuildPyWithWeb(build_py):
    """``build_py``, then ``web/`` copied to ``broker/web/`` in the build directory."""

    def run(self) -> None:
        super().run()
        # An editable install serves web/ from the checkout: no copy to make.
        if getattr(self, "editable_mode", False) or not WEB_SOURCE.is_dir():
            return
        target = Path(self.build_lib) / "broker" / "web"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(WEB_SOURCE, target, ignore=SKIPPED)


setup(cmdclass={"build_py": BuildPyWithWeb})
