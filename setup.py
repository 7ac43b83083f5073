"""Build step that puts the repository's ``anchors/`` and ``conformance/`` into the wheel.

The top-level folders stay the one source of truth; a wheel carries copies as package data
(``nnconform/_anchors`` and ``nnconform/conformance``), which :mod:`nnconform.paths` prefers
over the clone. Everything else about the package is in ``pyproject.toml``.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# (source folder, glob patterns, folder inside the package)
COPIES = (
    ("anchors", ("*.toml", "zoo/*/*.safetensors"), "_anchors"),
    ("conformance", ("*.py",), "conformance"),
)


class BuildPyWithData(build_py):
    """``build_py`` plus the manifests, zoo weights and conformance suite."""

    def run(self):
        super().run()
        if self.editable_mode:
            # An editable install reads the clone's folders directly: a copy would shadow them.
            return
        for source, patterns, target in COPIES:
            files = sorted({p for pattern in patterns for p in (HERE / source).glob(pattern)})
            if not files:
                raise SystemExit(f"setup.py: no {' or '.join(patterns)} under {HERE / source}: "
                                 f"the wheel would ship without its {source}/")
            for path in files:
                dest = Path(self.build_lib) / "nnconform" / target / path.relative_to(HERE / source)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)
        # A package, so that ``pytest --pyargs nnconform.conformance`` finds the suite.
        (Path(self.build_lib) / "nnconform" / "conformance" / "__init__.py").write_text(
            '"""The conformance suite, copied from the repository\'s conformance/ when the wheel was built."""\n')


setup(cmdclass={"build_py": BuildPyWithData})
