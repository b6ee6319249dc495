import pytest

from mapping.names import MAX_NAME_LEN, check_name


@pytest.mark.parametrize("name", ["echo", "producer-1", "blue.net", "A_1", "x" * MAX_NAME_LEN])
def test_plain_names_are_accepted(name):
    assert check_name("host id", name) == name


@pytest.mark.parametrize("name, words", [
    ("", "is empty"),
    ("x" * (MAX_NAME_LEN + 1), "the limit is 63"),
    ("a/b", "may hold only"),
    ("-lead", "may hold only"),
    ("tab\there", "may hold only"),
    ("é", "may hold only"),
])
def test_bad_names_are_refused_with_a_sentence_naming_the_field(name, words):
    with pytest.raises(ValueError, match="host id") as exc:
        check_name("host id", name)
    assert words in str(exc.value)
