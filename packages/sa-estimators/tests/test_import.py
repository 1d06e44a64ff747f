import sa_estimators


def test_version_is_a_string():
    assert isinstance(sa_estimators.__version__, str)
