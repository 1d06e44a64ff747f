"""List the packages that changed since their last release tag.

    python tools/changed.py            # one dist name per line
    python tools/changed.py --verbose  # with the last tag and the number of changed files

A package's last tag is its highest ``<dist-name>-v<version>``; a package never tagged
counts as changed. Uncommitted changes under ``packages/<dist-name>/`` count too, so a
maintainer sees what a release would pick up, and CI can test only what changed.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

DEFAULT_ROOT = Path(__file__).resolve().parents[1]


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()


def last_tag(root: Path, package: str) -> str | None:
    """The highest version tag of ``package`` (by version order), or None."""
    tags = _git(root, "tag", "--list", f"{package}-v*", "--sort=-v:refname").splitlines()
    return tags[0] if tags else None


def changed_files(root: Path, package: str, since: str | None) -> list[str]:
    """Files under packages/<package>/ that differ from ``since`` (all of them if None)."""
    path = f"packages/{package}"
    if since is None:
        tracked = _git(root, "ls-files", path).splitlines()
    else:
        tracked = _git(root, "diff", "--name-only", since, "--", path).splitlines()
    untracked = _git(root, "ls-files", "--others", "--exclude-standard", path).splitlines()
    return sorted(set(tracked) | set(untracked))


def changed_packages(root: Path = DEFAULT_ROOT) -> list[tuple[str, str | None, int]]:
    """``(package, last tag or None, number of changed files)`` for every changed package."""
    result = []
    for pkg_dir in sorted((root / "packages").iterdir()):
        if not (pkg_dir / "pyproject.toml").is_file():
            continue
        tag = last_tag(root, pkg_dir.name)
        files = changed_files(root, pkg_dir.name, tag)
        if files:
            result.append((pkg_dir.name, tag, len(files)))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", "-v", action="store_true", help="show tag and file count")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for package, tag, count in changed_packages(args.root):
        if args.verbose:
            print(f"{package}\t{tag or '(never released)'}\t{count} file(s) changed")
        else:
            print(package)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
