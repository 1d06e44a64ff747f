"""Ranks whose backward uses different parameters (or none): never a hang, torch's grads.

torch's DDP with ``find_unused_parameters=True`` lets every rank join every bucket's
all-reduce whatever its loss used; these cases once left a rank out (the others then
waited for the collective timeout). They run on a 2-rank group with a 10 s timeout and
a 60 s task limit, so a regression fails in seconds instead of hanging.
"""

from __future__ import annotations

import _scenarios as sc
import ddp_mini
import pytest
import torch

# torch's DDP itself hangs when a rank's forward reaches no parameter: ours is compared
# with the one-process reference there, and with torch everywhere else
TORCH_HANGS = ["rank1-no-params-in-forward"]
WITH_TORCH = [name for name in sc.DIVERGENT_STEPS if name not in TORCH_HANGS]
CONFIGS = {
    "native-tiny": {"allreduce": "native", "bucket_cap_mb": 1e-9},  # a bucket per parameter
    "native-one-bucket": {"allreduce": "native", "bucket_cap_mb": 25.0},
    "ring-tiny": {"allreduce": "ring", "bucket_cap_mb": 1e-9},
    "no-overlap": {"allreduce": "native", "bucket_cap_mb": 1e-9, "overlap": False},
}


def assert_grads_equal(steps, grads, label, want_label="reference"):
    for name, step in zip(steps, grads, strict=True):
        for param, want in step[want_label].items():
            got = step[label][param]
            if want is None:  # no rank used it: .grad is left as it was (None), like torch
                assert got is None, (name, param)
            else:
                assert got is not None, (name, param)
                torch.testing.assert_close(got, want, atol=1e-12, rtol=0, msg=(name, param))


def run(pool, steps, ours, with_peer):
    results = pool.run(sc.divergent_backward, steps, ours, with_peer, timeout=60)
    results = [r for r in results if r is not None]
    assert len(results) == 2
    for r in results:
        labels = ["ours", "peer"] if with_peer else ["ours"]
        for label in labels:
            assert_grads_equal(steps, r["grads"], label)
            for key, want in r["reference"].items():
                torch.testing.assert_close(r[label][key], want, atol=1e-12, rtol=0, msg=key)
        if with_peer:
            assert_grads_equal(steps, r["grads"], "ours", want_label="peer")
        torch.testing.assert_close(r["ours"], results[0]["ours"], atol=0, rtol=0)
    return results


@pytest.mark.parametrize("config", list(CONFIGS))
def test_divergent_ranks_match_torch_ddp(pool, config):
    # every kind of step once, then in reverse order: each must leave a clean state
    steps = WITH_TORCH + WITH_TORCH[::-1]
    results = run(pool, steps, CONFIGS[config], with_peer=True)
    # not vacuous: "nobody" leaves every gradient None, "rank1-no-grad" none
    by_step = dict(zip(steps, results[0]["grads"], strict=False))
    assert all(g is None for g in by_step["nobody"]["ours"].values())
    assert all(g is not None for g in by_step["rank1-no-grad"]["ours"].values())


@pytest.mark.parametrize("config", ["native-tiny", "ring-tiny"])
def test_rank_whose_forward_reaches_no_parameter(pool, config):
    steps = ["same", *TORCH_HANGS, "other-heads", *TORCH_HANGS]
    run(pool, steps, CONFIGS[config], with_peer=False)


def test_rank_reaching_no_parameter_without_flag_fails_with_names():
    # find_unused_parameters=False: rank 1 names the parameters, rank 0 fails too
    with pytest.raises(ddp_mini.SpawnError) as info:
        ddp_mini.spawn(sc.no_param_reached_without_flag, 2, "gloo", timeout=20, join_timeout=120)
    assert "trunk.weight" in info.value.failures[1]
    assert "find_unused_parameters=True" in info.value.failures[1]
    assert "killed" not in info.value.failures[0]
