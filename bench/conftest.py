"""The central benchmark harness: presets, device selection and machine metadata.

Run through nox (``nox -s bench [-- --preset gpu]``) or directly::

    python -m pytest bench --preset cpu --benchmark-json bench/reports/latest/benchmark.json

``--preset`` is read before the bench modules are imported, so their parametrisations
(``harness.pick(cpu=..., gpu=...)``) see it. The machine ceilings that ``pct_of_limit``
is computed against are measured once per run and stored in the JSON's machine_info.
"""

from __future__ import annotations

import pytest

import harness


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("bench presets")
    group.addoption(
        "--preset",
        choices=harness.PRESETS,
        default="cpu",
        help="cpu: small sizes, ~10 min on 2 cores (default); gpu: full sizes on CUDA",
    )


def pytest_configure(config: pytest.Config) -> None:
    harness.set_preset(config.getoption("--preset"))


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """Add the torch version, the device and the measured ceilings to the JSON."""
    import machine

    machine_info["preset"] = harness.preset()
    machine_info.update(machine.describe(harness.device()))


@pytest.fixture(scope="session")
def device() -> str:
    """``"cuda"`` under the gpu preset when CUDA is present, else ``"cpu"``."""
    return harness.device()


@pytest.fixture(scope="session")
def preset() -> str:
    return harness.preset()
