import amp_scaler


def test_version_is_a_string():
    assert isinstance(amp_scaler.__version__, str)
