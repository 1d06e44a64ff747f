"""ring_allreduce against the float64 sum and against dist.all_reduce (gloo, 1-4 ranks)."""

from __future__ import annotations

import _scenarios as sc
import pytest

SIZES = [0, 1, 2, 3, 7, 1001, 4099]
WORLDS = [1, 2, 3, 4]


# message sizes of the pipelined ring: one segment per chunk (1 MB, more than any chunk
# here), 5 float64 per segment (uneven tails everywhere), and the readable stepwise one
SCHEDULES = {"1MB": (1 << 20, False), "40B": (40, False), "stepwise": (1 << 20, True)}


@pytest.fixture(scope="module")
def sum_errors(pool):
    return {
        name: pool.run(sc.ring_sum_errors, SIZES, WORLDS, seg, stepwise)
        for name, (seg, stepwise) in SCHEDULES.items()
    }


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("op", ["sum", "avg"])
@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("size", SIZES)
def test_ring_equals_float64_sum(sum_errors, size, world, op, schedule):
    errors = sum_errors[schedule]
    for rank in range(world):
        assert errors[rank][(size, world, op)] < 1e-12, (rank, size, world, op)
    for rank in range(world, 4):  # ranks outside the subgroup did not take part
        assert (size, world, op) not in errors[rank]


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-5), ("float16", 1e-2), ("bfloat16", 8e-2)])
@pytest.mark.parametrize("key", [2, 3, "tail3"])
def test_ring_low_precision_matches_native(pool, key, dtype, tol):
    results = [r for r in pool.run(sc.ring_vs_native, key, 1001, dtype) if r is not None]
    assert len(results) == (2 if key == 2 else 3)
    for r in results:
        assert r["dtype"] == f"torch.{dtype}"
        # error(ours) <= 2 * error(gloo) + atol, both against the float64 sum
        assert r["ours_err"] <= 2 * r["native_err"] + tol
        if r["world"] == 2:  # a + b is the same in any order: bitwise equal
            assert r["identical"]


def test_ring_non_contiguous_is_written_back(pool):
    errors = pool.run(sc.ring_non_contiguous)
    assert errors[:3] == [0.0, 0.0, 0.0]
    assert errors[3] is None
