import ddp_mini


def test_version_is_a_string():
    assert isinstance(ddp_mini.__version__, str)
