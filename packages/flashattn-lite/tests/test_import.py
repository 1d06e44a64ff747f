import flashattn_lite


def test_version_is_a_string():
    assert isinstance(flashattn_lite.__version__, str)
