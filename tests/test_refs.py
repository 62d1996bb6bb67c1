import pytest

from lora_hub.errors import InvalidNameError
from lora_hub.refs import AdapterName, Ref, check_tag


@pytest.mark.parametrize(
    ("text", "namespace", "name", "selector"),
    [
        ("sql-lora", "", "sql-lora", "latest"),
        ("acme/sql-lora", "acme", "sql-lora", "latest"),
        ("acme/sql-lora:3", "acme", "sql-lora", "3"),
        ("acme/sql-lora:03", "acme", "sql-lora", "3"),
        ("acme/sql-lora:prod", "acme", "sql-lora", "prod"),
        ("a/b.c_d-e:latest", "a", "b.c_d-e", "latest"),
        ("x" * 96, "", "x" * 96, "latest"),
    ],
)
def test_parse_valid(text: str, namespace: str, name: str, selector: str) -> None:
    ref = Ref.parse(text)
    assert (ref.adapter.namespace, ref.adapter.name, ref.selector) == (namespace, name, selector)


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("", "empty"),
        ("acme/..", "'..'"),
        ("acme/a..b", "'..'"),
        ("a--b", "'--'"),
        ("Acme/sql", "upper-case"),
        ("acme/SQL", "upper-case"),
        ("a/b/c", "more than one '/'"),
        ("/abs", "empty namespace"),
        ("acme/", "empty name"),
        ("x" * 97, "limit is 96"),
        ("-lead", "not valid"),
        (".hidden", "not valid"),
        ("a b", "not valid"),
        ("acme/sql:", "ends with ':'"),
        ("acme/sql:0", "versions start at 1"),
        ("acme/sql:Prod", "upper-case"),
        ("acme/sql:a:b", "not valid"),
    ],
)
def test_parse_invalid(text: str, phrase: str) -> None:
    with pytest.raises(InvalidNameError) as info:
        Ref.parse(text)
    assert phrase in str(info.value)


def test_adapter_name_refuses_version() -> None:
    with pytest.raises(InvalidNameError, match="names a version"):
        AdapterName.parse("acme/sql:3")


@pytest.mark.parametrize(("tag", "phrase"), [("3", "is a number"), ("latest", "implicit"), ("Prod", "upper-case")])
def test_bad_tags(tag: str, phrase: str) -> None:
    with pytest.raises(InvalidNameError, match=phrase):
        check_tag(tag)
