import subprocess
import sys

import sa_estimators


def test_version_is_a_string():
    assert isinstance(sa_estimators.__version__, str)


def test_public_api_is_complete():
    expected = {
        "harmonic_step", "polynomial_step", "constant_step", "StepSize", "IncrementalMean",
        "StreamingQuantile", "robbins_monro", "RobbinsMonro", "SAResult", "kiefer_wolfowitz",
        "spsa", "mean_estimation", "BatchedIncrementalMean", "BatchedStreamingQuantile",
        "WindowedQuantile",
    }  # fmt: skip
    assert set(sa_estimators.__all__) == expected
    assert all(hasattr(sa_estimators, name) for name in expected)


def test_import_does_not_pull_in_torch_or_matplotlib():
    code = (
        "import sys, sa_estimators as sa; sa.StreamingQuantile(0.5).update([1.0, 2.0]); "
        "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules, 'eager import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
