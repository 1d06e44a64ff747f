import mtp_heads


def test_version_is_a_string():
    assert isinstance(mtp_heads.__version__, str)
