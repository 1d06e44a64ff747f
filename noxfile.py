"""Sessions of the monorepo: tests, integration, bench, lint, build, docs, tooling, e2e.

    nox -l                                   # list sessions
    nox -s tests                             # every package, each in its own venv
    nox -s "tests(package='adamw-ref')"      # one package; posargs go to pytest
    nox -s bench                             # cpu preset; `nox -s bench -- --preset gpu`

Every venv is created with pip (not uv): pip finds the local CPU torch wheel through
the machine's pip configuration, and ``tools/constraints.txt`` pins ``torch==2.13.0``
so that a package's honest ``torch>=2.4`` never pulls a multi-GB CUDA build.
Set ``MONOREPO_CONSTRAINTS`` to another file (or to ``""``) on machines that want a
different torch.

A venv with torch takes about 1-2.5 GB, and the full test run makes twenty of them, so
the tests, integration and build sessions delete their venv when they end (pass or
fail): the run's peak disk use is one venv, not all of them. Set
``MONOREPO_KEEP_VENVS=1`` to keep them for inspection or ``nox -r``.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import nox

nox.needs_version = ">=2024.3.2"
nox.options.sessions = [
    "lint",
    "tests",
    "tooling",
    "integration",
    "docs",
    "build",
]  # not bench, e2e
nox.options.reuse_existing_virtualenvs = False

ROOT = Path(__file__).resolve().parent
PACKAGES = sorted(p.name for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").is_file())
CONSTRAINTS = os.environ.get("MONOREPO_CONSTRAINTS", str(ROOT / "tools" / "constraints.txt"))
PACKAGE_DIRS = [str(ROOT / "packages" / p) for p in PACKAGES]
BENCH_REQUIREMENTS = ROOT / "bench" / "requirements.txt"
REPORTS = ROOT / "bench" / "reports" / "latest"


KEEP_VENVS = os.environ.get("MONOREPO_KEEP_VENVS", "") not in ("", "0")


def discards_venv(func: Callable[..., None]) -> Callable[..., None]:
    """Delete the session's venv (and its tmp/) when the session ends, unless kept.

    Why: twenty venvs of 1-2.5 GB each filled a CI machine's disk (ENOSPC) mid-run.
    """

    @functools.wraps(func)
    def wrapper(session: nox.Session, **kwargs: str) -> None:
        try:
            func(session, **kwargs)
        finally:
            # only a venv that nox made for this session: never a --no-venv passthrough
            # (no location) nor the interpreter nox itself runs in
            location = getattr(session.virtualenv, "location", None)
            venv = Path(location).resolve() if location else None
            if (
                not KEEP_VENVS
                and venv is not None
                and (venv / "pyvenv.cfg").is_file()
                and venv != Path(sys.prefix).resolve()
            ):
                shutil.rmtree(venv, ignore_errors=True)

    return wrapper


def scratch_env(session: nox.Session) -> dict[str, str]:
    """Caches that tests write (torch.compile's) go into the session's tmp/, not /tmp."""
    return {"TORCHINDUCTOR_CACHE_DIR": str(Path(session.create_tmp()) / "inductor")}


def module_name(package: str) -> str:
    return package.replace("-", "_")


def install(session: nox.Session, *args: str) -> None:
    """pip install under the torch pin."""
    pins = ["-c", CONSTRAINTS] if CONSTRAINTS else []
    session.install(*pins, *args)


def triton_env() -> dict[str, str]:
    """Triton kernels run through the interpreter where there is no GPU."""
    if os.environ.get("TRITON_INTERPRET") is not None:
        return {"TRITON_INTERPRET": os.environ["TRITON_INTERPRET"]}
    has_gpu = Path("/dev/nvidia0").exists() or Path("/dev/nvidiactl").exists()
    return {} if has_gpu else {"TRITON_INTERPRET": "1"}


@nox.session
@nox.parametrize("package", PACKAGES)
@discards_venv
def tests(session: nox.Session, package: str) -> None:
    """One package's tests in a venv holding only that package and its test extras.

    An import of a sibling package or of an undeclared library fails here. Slow tests
    are excluded unless posargs say otherwise (``-- -m slow``).
    """
    install(session, f"{ROOT / 'packages' / package}[test]")
    args = session.posargs or ["-m", "not slow"]
    session.chdir(ROOT / "packages" / package)
    session.run(
        "python",
        "-m",
        "pytest",
        "tests",
        "-p",
        "no:cacheprovider",
        *args,
        env={**triton_env(), **scratch_env(session)},
    )


@nox.session
@discards_venv
def integration(session: nox.Session) -> None:
    """All packages together: cross-package tests, doc examples, every bench case once."""
    install(session, *PACKAGE_DIRS, "-r", str(BENCH_REQUIREMENTS))
    session.chdir(ROOT / "bench")
    session.run(
        "python",
        "-m",
        "pytest",
        ".",
        "--benchmark-disable",
        "-p",
        "no:cacheprovider",
        "-m",
        "not slow",
        *session.posargs,
        env={**triton_env(), **scratch_env(session)},
    )


def _bench_args(posargs: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="nox -s bench --")
    parser.add_argument("--preset", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument(
        "--update-readmes",
        action="store_true",
        help="write the new tables into the package READMEs",
    )
    return parser.parse_known_args(posargs)


@nox.session(venv_params=["--system-site-packages"])
def bench(session: nox.Session) -> None:
    """Time every package against its peer, then write bench/reports/latest/.

    cpu preset (default): installs the packages and bench requirements.
    gpu preset: installs nothing, so it runs offline on a machine that already has
    torch, triton, pytest, pytest-benchmark and pandas; the packages are imported
    from their sources, and cases whose peer library is missing are skipped.
    """
    args, pytest_args = _bench_args(session.posargs)
    env = {}
    if args.preset == "gpu":
        env["PYTHONPATH"] = os.pathsep.join(str(ROOT / "packages" / p / "src") for p in PACKAGES)
    else:
        install(session, *PACKAGE_DIRS, "-r", str(BENCH_REQUIREMENTS))
    REPORTS.mkdir(parents=True, exist_ok=True)
    result_json = REPORTS / "benchmark.json"
    session.chdir(ROOT / "bench")
    session.run(
        "python",
        "-m",
        "pytest",
        ".",
        f"--preset={args.preset}",
        "--benchmark-only",
        f"--benchmark-json={result_json}",
        "-p",
        "no:cacheprovider",
        *pytest_args,
        env=env,
    )
    report = ["python", "report.py", str(result_json)]
    if args.update_readmes:
        report.append("--update-readmes")
    session.run(*report, env=env)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole tree."""
    session.install("ruff==0.17.6")  # pinned: formatting must not drift between machines
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
@nox.parametrize("package", PACKAGES)
@discards_venv
def build(session: nox.Session, package: str) -> None:
    """Wheel + sdist into dist/<package>/, twine check, then the wheel alone in a fresh venv."""
    session.install("build", "twine")
    out = ROOT / "dist" / package
    for old in out.glob("*"):
        old.unlink()
    session.run("python", "-m", "build", "--outdir", str(out), str(ROOT / "packages" / package))
    session.run("twine", "check", "--strict", *[str(p) for p in sorted(out.iterdir())])
    wheel = next(out.glob("*.whl"))
    fresh = Path(session.create_tmp()).resolve() / f"fresh-{package}"
    session.run(sys.executable, "-m", "venv", "--clear", str(fresh), external=True)
    pins = ["-c", CONSTRAINTS] if CONSTRAINTS else []
    session.run(str(fresh / "bin" / "pip"), "install", "-q", *pins, str(wheel), external=True)
    module = module_name(package)
    session.chdir(session.create_tmp())  # not the repo: import the installed wheel
    session.run(
        str(fresh / "bin" / "python"),
        "-c",
        f"import {module}; print({module}.__name__, {module}.__version__)",
        external=True,
    )


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site in strict mode (warnings fail) into docs/site/."""
    session.install("-r", str(ROOT / "docs" / "requirements.txt"))
    session.run(
        "mkdocs",
        "build",
        "--strict",
        "-f",
        str(ROOT / "docs" / "mkdocs.yml"),
        "-d",
        str(ROOT / "docs" / "site"),
        *session.posargs,
        env={"NO_MKDOCS_2_WARNING": "1"},
    )


@nox.session
def tooling(session: nox.Session) -> None:
    """Tests of tools/ (package template, release, change detection, the GPU session script)."""
    session.install("pytest", "build", "twine")
    session.run(
        "python",
        "-m",
        "pytest",
        str(ROOT / "tools" / "tests"),
        "-p",
        "no:cacheprovider",
        *session.posargs,
    )


@nox.session
def e2e(session: nox.Session) -> None:
    """The end-to-end scenario (issue: train a tiny LM, then decode with its heads).

    ``nox -s e2e`` trains for about 20 minutes on 2 cores (reused on reruns), trains
    the Medusa and MTP heads, decodes held-out prompts three ways and writes
    bench/reports/latest/e2e/. ``-- --fresh`` retrains, ``-- --quick`` is a smoke run.
    """
    install(session, *PACKAGE_DIRS, "-r", str(BENCH_REQUIREMENTS))
    session.chdir(ROOT / "bench")
    session.run("python", "-m", "e2e.run", *session.posargs)
