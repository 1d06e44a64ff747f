"""Release one package of the monorepo: check, bump, date the changelog, build, verify, tag.

    python tools/release.py adamw-ref minor --dry-run
    python tools/release.py adamw-ref 0.2.0

Steps, each of which stops the release with a clear message when it fails:

1. the package exists, the tree is clean, the new version is above the current one and
   its tag ``<dist-name>-v<version>`` does not exist yet, and the changelog's
   "Unreleased" section says something;
2. the package's tests pass (``nox -s "tests(package='<name>')"``);
3. ``__version__`` is bumped and "Unreleased" becomes ``## [<version>] - <date>``;
4. wheel and sdist are built into ``dist/<package>/`` and pass ``twine check``;
5. the wheel is installed alone into a fresh venv and imported;
6. the two changed files are committed and the tag is created.

Nothing is uploaded: the ``twine upload`` command is printed instead. ``--dry-run``
performs the checks of step 1 and prints what would change.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_ROOT = Path(__file__).resolve().parents[1]
VERSION_LINE = re.compile(r'^__version__\s*=\s*"(\d+)\.(\d+)\.(\d+)"', re.MULTILINE)
EXPLICIT = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
UNRELEASED = re.compile(r"^## \[Unreleased\]\s*$", re.MULTILINE)


class ReleaseError(Exception):
    """A release precondition or step failed; the message says which and why."""


def git(root: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        raise ReleaseError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def package_paths(root: Path, package: str) -> tuple[Path, Path, Path]:
    """(package dir, __init__.py holding __version__, CHANGELOG.md) of ``package``."""
    pkg_dir = root / "packages" / package
    if not (pkg_dir / "pyproject.toml").is_file():
        known = sorted(p.name for p in (root / "packages").iterdir() if p.is_dir())
        raise ReleaseError(f"unknown package {package!r}; known packages: {', '.join(known)}")
    init = pkg_dir / "src" / package.replace("-", "_") / "__init__.py"
    changelog = pkg_dir / "CHANGELOG.md"
    for path in (init, changelog):
        if not path.is_file():
            raise ReleaseError(f"package {package!r} has no {path.relative_to(root)}")
    return pkg_dir, init, changelog


def read_version(init: Path) -> tuple[int, int, int]:
    match = VERSION_LINE.search(init.read_text())
    if not match:
        raise ReleaseError(f'{init} has no line __version__ = "X.Y.Z"')
    return tuple(int(x) for x in match.groups())  # type: ignore[return-value]


def next_version(current: tuple[int, int, int], bump: str) -> tuple[int, int, int]:
    """Apply ``major|minor|patch`` or an explicit ``X.Y.Z`` that must be above ``current``."""
    major, minor, patch = current
    if bump == "major":
        return (major + 1, 0, 0)
    if bump == "minor":
        return (major, minor + 1, 0)
    if bump == "patch":
        return (major, minor, patch + 1)
    match = EXPLICIT.match(bump)
    if not match:
        raise ReleaseError(f"version must be major, minor, patch or X.Y.Z, got {bump!r}")
    new = tuple(int(x) for x in match.groups())
    if new <= current:
        raise ReleaseError(
            f"version {bump} does not go forward from the current {'.'.join(map(str, current))}"
        )
    return new  # type: ignore[return-value]


def unreleased_notes(changelog_text: str) -> str:
    """The text of the "Unreleased" section (up to the next ``## `` heading)."""
    match = UNRELEASED.search(changelog_text)
    if not match:
        raise ReleaseError('CHANGELOG.md has no "## [Unreleased]" section')
    rest = changelog_text[match.end() :]
    following = re.search(r"^## ", rest, re.MULTILINE)
    return (rest[: following.start()] if following else rest).strip()


def dated_changelog(changelog_text: str, version: str, date: dt.date) -> str:
    """Keep an empty "Unreleased" on top and move its entries under the new version."""
    return UNRELEASED.sub(
        f"## [Unreleased]\n\n## [{version}] - {date.isoformat()}", changelog_text, count=1
    )


def run(cmd: list[str], cwd: Path, what: str) -> None:
    print("+", " ".join(cmd), flush=True)
    if subprocess.run(cmd, cwd=cwd).returncode != 0:
        raise ReleaseError(f"{what} failed: {' '.join(cmd)}")


def release(
    root: Path,
    package: str,
    bump: str,
    *,
    dry_run: bool = False,
    skip_tests: bool = False,
    today: dt.date | None = None,
) -> str:
    """Release ``package`` from the repository at ``root``; returns the new version."""
    pkg_dir, init, changelog = package_paths(root, package)
    current = read_version(init)
    version = ".".join(map(str, next_version(current, bump)))
    tag = f"{package}-v{version}"
    dirty = git(root, "status", "--porcelain")
    if dirty:
        raise ReleaseError(f"the working tree is not clean; commit or stash first:\n{dirty}")
    if git(root, "tag", "--list", tag):
        raise ReleaseError(f"tag {tag} already exists")
    changelog_text = changelog.read_text()
    notes = unreleased_notes(changelog_text)
    if not notes:
        raise ReleaseError(f'the "Unreleased" section of {changelog} is empty: nothing to release')
    print(f"{package}: {'.'.join(map(str, current))} -> {version} (tag {tag})")
    if dry_run:
        print(f"--- release notes ---\n{notes}\n--- dry run: nothing changed ---")
        return version

    if not skip_tests:
        run([sys.executable, "-m", "nox", "-s", f"tests(package='{package}')"], root, "tests")
    original_init, original_changelog = init.read_text(), changelog_text
    date = today or dt.date.today()
    try:
        init.write_text(VERSION_LINE.sub(f'__version__ = "{version}"', original_init, count=1))
        changelog.write_text(dated_changelog(original_changelog, version, date))
        out = root / "dist" / package
        shutil.rmtree(out, ignore_errors=True)
        run([sys.executable, "-m", "build", "--outdir", str(out), str(pkg_dir)], root, "build")
        artifacts = sorted(str(p) for p in out.iterdir())
        run([sys.executable, "-m", "twine", "check", "--strict", *artifacts], root, "twine check")
        check_wheel_alone(root, out, package)
    except BaseException:
        init.write_text(original_init)  # leave the tree as we found it
        changelog.write_text(original_changelog)
        raise
    git(root, "add", str(init), str(changelog))
    message = f"{package}: release v{version}"
    git(root, "commit", "-q", "-m", message, "--", str(init), str(changelog))
    git(root, "tag", "-a", tag, "-m", f"{package} {version}\n\n{notes}")
    print(f"tagged {tag}. To publish:\n  python -m twine upload dist/{package}/*")
    return version


def check_wheel_alone(root: Path, out: Path, package: str) -> None:
    """Install the wheel with nothing else of the monorepo into a fresh venv and import it."""
    wheel = next(out.glob("*.whl"))
    constraints = root / "tools" / "constraints.txt"
    pins = ["-c", str(constraints)] if constraints.is_file() else []
    module = package.replace("-", "_")
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        run([sys.executable, "-m", "venv", str(venv)], root, "venv creation")
        run([str(venv / "bin" / "pip"), "install", "-q", *pins, str(wheel)], root, "wheel install")
        run(
            [str(venv / "bin" / "python"), "-c", f"import {module}; print({module}.__version__)"],
            Path(tmp),
            "import of the installed wheel",
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Release one package (never uploads).")
    parser.add_argument("package", help="dist name under packages/, e.g. adamw-ref")
    parser.add_argument("version", help="major, minor, patch or an explicit X.Y.Z")
    parser.add_argument("--dry-run", action="store_true", help="check and print, change nothing")
    parser.add_argument(
        "--skip-tests", action="store_true", help="do not run the package's nox tests first"
    )
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        release(
            args.root, args.package, args.version, dry_run=args.dry_run, skip_tests=args.skip_tests
        )
    except ReleaseError as exc:
        print(f"release: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
