import detection_map


def test_version_is_a_string():
    assert isinstance(detection_map.__version__, str)
