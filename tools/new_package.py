"""Create a new package under packages/ from the house template.

    python tools/new_package.py adamw-ref "Adam and AdamW, reference and fast paths" --torch

writes packages/adamw-ref/ with a pyproject (its own version, read from
``__version__``), a README skeleton holding the required sections, a CHANGELOG with an
"Unreleased" section, ``src/adamw_ref/__init__.py``, ``py.typed`` and ``tests/``.
It refuses to overwrite an existing package.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIST_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")

PYPROJECT = """\
[build-system]
requires = ["hatchling>=1.18"]
build-backend = "hatchling.build"

[project]
name = "{dist}"
dynamic = ["version"]
description = "{description}"
readme = "README.md"
requires-python = ">=3.10"
license = {{ text = "MIT" }}
dependencies = [{deps}]

[project.optional-dependencies]
test = ["pytest>=7"]

[tool.hatch.version]
path = "src/{module}/__init__.py"

[tool.hatch.build.targets.wheel]
packages = ["src/{module}"]

[tool.hatch.build.targets.sdist]
include = ["src", "tests", "README.md", "CHANGELOG.md", "pyproject.toml"]
"""

INIT = '''\
"""{description}."""

__version__ = "0.1.0"

__all__: list[str] = []
'''

README = """\
# {dist}

{description}.

## Install

```bash
pip install packages/{dist}
```

## Quickstart

```python
import {module}

print({module}.__version__)
```

## API

## Guarantees

## Benchmarks

<!-- bench:start -->
No benchmark has been run yet: `nox -s bench` fills this table.
<!-- bench:end -->

## References
"""

CHANGELOG = """\
# Changelog

All notable changes to `{dist}` are recorded here, in the format of
[Keep a Changelog](https://keepachangelog.com/en/1.1.0/); versions follow
[Semantic Versioning](https://semver.org/).

## [Unreleased]

### Added

- Package skeleton.
"""

TEST = """\
import {module}


def test_version_is_a_string():
    assert isinstance({module}.__version__, str)
"""


def create_package(dist: str, description: str, *, torch: bool, root: Path = ROOT) -> Path:
    """Write the skeleton of package ``dist`` under ``root/packages`` and return its path."""
    if not DIST_NAME.match(dist):
        raise ValueError(f"dist name must be lowercase words joined by '-', got {dist!r}")
    pkg_dir = root / "packages" / dist
    if pkg_dir.exists():
        raise FileExistsError(f"package directory already exists: {pkg_dir}")
    module = dist.replace("-", "_")
    fields = {
        "dist": dist,
        "module": module,
        "description": description.rstrip("."),
        "deps": '"torch>=2.4"' if torch else '"numpy>=1.23"',
    }
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        "CHANGELOG.md": CHANGELOG,
        f"src/{module}/__init__.py": INIT,
        f"src/{module}/py.typed": "",
        "tests/test_import.py": TEST,
    }
    for rel, template in files.items():
        path = pkg_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**fields))
    return pkg_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dist", help="distribution name, e.g. adamw-ref")
    parser.add_argument("description", help="one-line description")
    parser.add_argument("--torch", action="store_true", help="depend on torch (else numpy)")
    args = parser.parse_args(argv)
    try:
        path = create_package(args.dist, args.description, torch=args.torch)
    except (ValueError, FileExistsError) as exc:
        parser.error(str(exc))
    print(f"created {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
