import adamw_ref


def test_version_is_a_string():
    assert isinstance(adamw_ref.__version__, str)
