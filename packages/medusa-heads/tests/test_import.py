import medusa_heads


def test_version_is_a_string():
    assert isinstance(medusa_heads.__version__, str)
