"""Tests of tools/: the package template, release.py and changed.py, on a throwaway repo.

Each test gets a fresh git repository in a temp folder holding a copy of tools/ and one
numpy-only package made by the template, so nothing here touches the real repository.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TOOLS))

import changed  # noqa: E402
import new_package  # noqa: E402
import release  # noqa: E402


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "packages").mkdir(parents=True)
    shutil.copytree(TOOLS, root / "tools", ignore=shutil.ignore_patterns("tests", "__pycache__"))
    new_package.create_package("toy-pkg", "A toy package for release tests", torch=False, root=root)
    (root / ".gitignore").write_text("dist/\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "ci@example.invalid")
    git(root, "config", "user.name", "CI")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    return root


def test_template_writes_the_required_files(repo: Path) -> None:
    pkg = repo / "packages" / "toy-pkg"
    for rel in [
        "pyproject.toml",
        "README.md",
        "CHANGELOG.md",
        "src/toy_pkg/__init__.py",
        "src/toy_pkg/py.typed",
        "tests/test_import.py",
    ]:
        assert (pkg / rel).is_file(), rel
    readme = (pkg / "README.md").read_text()
    for section in [
        "## Install",
        "## Quickstart",
        "## API",
        "## Guarantees",
        "## Benchmarks",
        "## References",
        "<!-- bench:start -->",
    ]:
        assert section in readme
    assert "## [Unreleased]" in (pkg / "CHANGELOG.md").read_text()


def test_template_rejects_bad_names_and_existing_packages(repo: Path) -> None:
    with pytest.raises(ValueError, match="dist name"):
        new_package.create_package("Bad_Name", "x", torch=False, root=repo)
    with pytest.raises(FileExistsError, match="toy-pkg"):
        new_package.create_package("toy-pkg", "x", torch=False, root=repo)


def test_unknown_package_is_a_clear_error(repo: Path) -> None:
    with pytest.raises(release.ReleaseError, match="unknown package 'nope'.*toy-pkg"):
        release.release(repo, "nope", "patch", skip_tests=True)


def test_dirty_tree_is_refused(repo: Path) -> None:
    (repo / "packages" / "toy-pkg" / "README.md").write_text("edited\n")
    with pytest.raises(release.ReleaseError, match="not clean"):
        release.release(repo, "toy-pkg", "patch", skip_tests=True)


@pytest.mark.parametrize("version", ["0.1.0", "0.0.9", "0.1"])
def test_version_must_go_forward_and_be_well_formed(repo: Path, version: str) -> None:
    with pytest.raises(release.ReleaseError, match="version"):
        release.release(repo, "toy-pkg", version, skip_tests=True)


def test_bumps() -> None:
    assert release.next_version((1, 2, 3), "major") == (2, 0, 0)
    assert release.next_version((1, 2, 3), "minor") == (1, 3, 0)
    assert release.next_version((1, 2, 3), "patch") == (1, 2, 4)
    assert release.next_version((1, 2, 3), "1.10.0") == (1, 10, 0)


def test_empty_unreleased_section_is_refused(repo: Path) -> None:
    changelog = repo / "packages" / "toy-pkg" / "CHANGELOG.md"
    text = changelog.read_text()
    changelog.write_text(text[: text.index("## [Unreleased]")] + "## [Unreleased]\n")
    git(repo, "commit", "-q", "-am", "empty changelog")
    with pytest.raises(release.ReleaseError, match="empty"):
        release.release(repo, "toy-pkg", "patch", skip_tests=True)


def test_dry_run_changes_nothing(repo: Path) -> None:
    head = git(repo, "rev-parse", "HEAD")
    assert release.release(repo, "toy-pkg", "minor", dry_run=True) == "0.2.0"
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "rev-parse", "HEAD") == head
    assert git(repo, "tag", "--list") == ""


def test_full_release_bumps_dates_builds_and_tags(repo: Path) -> None:
    day = dt.date(2026, 12, 1)
    version = release.release(repo, "toy-pkg", "minor", skip_tests=True, today=day)
    assert version == "0.2.0"
    pkg = repo / "packages" / "toy-pkg"
    assert '__version__ = "0.2.0"' in (pkg / "src" / "toy_pkg" / "__init__.py").read_text()
    changelog = (pkg / "CHANGELOG.md").read_text()
    assert "## [Unreleased]\n\n## [0.2.0] - 2026-12-01" in changelog
    assert "Package skeleton" in changelog.split("## [0.2.0]")[1]
    artifacts = sorted(p.name for p in (repo / "dist" / "toy-pkg").iterdir())
    assert artifacts == ["toy_pkg-0.2.0-py3-none-any.whl", "toy_pkg-0.2.0.tar.gz"]
    assert git(repo, "tag", "--list") == "toy-pkg-v0.2.0"
    assert git(repo, "status", "--porcelain") == ""
    # the same tag cannot be made twice, and a second release goes on from 0.2.0
    with pytest.raises(release.ReleaseError, match="version"):
        release.release(repo, "toy-pkg", "0.2.0", skip_tests=True)


def test_changed_lists_packages_since_their_tag(repo: Path) -> None:
    assert [p for p, _, _ in changed.changed_packages(repo)] == ["toy-pkg"]  # never tagged
    git(repo, "tag", "toy-pkg-v0.1.0")
    assert changed.changed_packages(repo) == []
    (repo / "packages" / "toy-pkg" / "src" / "toy_pkg" / "extra.py").write_text("X = 1\n")
    assert changed.changed_packages(repo) == [("toy-pkg", "toy-pkg-v0.1.0", 1)]
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "extra")
    git(repo, "tag", "toy-pkg-v0.10.0")  # version order, not string order
    assert changed.last_tag(repo, "toy-pkg") == "toy-pkg-v0.10.0"
    assert changed.changed_packages(repo) == []


def test_cli_reports_errors_with_exit_code_2(repo: Path, capsys: pytest.CaptureFixture) -> None:
    assert release.main(["nope", "patch", "--root", str(repo)]) == 2
    assert "unknown package 'nope'" in capsys.readouterr().err
