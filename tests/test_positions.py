import pytest

from steerlab.positions import Position, PositionError, parse_position


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("response[:10]", Position("response", None, 10)),
        (10, Position("response", None, 10)),
        ("5", Position("response", None, 5)),
        ("all", Position("response")),
        ("response[:]", Position("response")),
        ("response[2:8]", Position("response", 2, 8)),
        ("prompt[-1]", Position("prompt", index=-1)),
        ("all[:]", Position("all")),
    ],
)
def test_parse(spec, expected):
    assert parse_position(spec) == expected


@pytest.mark.parametrize("spec", ["resp[:3]", "response[1:2:3]", "0", "response[x]", "", "-3"])
def test_invalid_positions_list_examples(spec):
    with pytest.raises(PositionError, match=r"valid: response\[:10\]"):
        parse_position(spec)


@pytest.mark.parametrize(
    ("spec", "prompt_len", "response_len", "bounds"),
    [
        ("response[:10]", 7, 4, (7, 11)),  # shorter response: all of it
        ("response[:10]", 7, 20, (7, 17)),
        ("response[2:8]", 7, 20, (9, 15)),
        ("response[:]", 7, 20, (7, 27)),
        ("response[-3:]", 7, 20, (24, 27)),
        ("prompt[-1]", 7, 20, (6, 7)),
        ("all[:]", 7, 20, (0, 27)),
        ("response[:5]", 7, 0, (7, 7)),  # empty window
        ("response[3]", 7, 2, (7, 7)),  # index past the end: empty
    ],
)
def test_bounds(spec, prompt_len, response_len, bounds):
    assert parse_position(spec).bounds(prompt_len, response_len) == bounds


def test_roundtrip_and_slug():
    for spec in ["response[:10]", "prompt[-1]", "all[:]", "response[2:8]"]:
        assert str(parse_position(spec)) == spec
    assert parse_position(10).slug == "response__10"
    assert parse_position("all").slug == "response"


@pytest.mark.parametrize(
    ("spec", "tag"),
    [(10, "10"), ("all", "all"), ("response[:5]", "5"), ("response[2:8]", "response_2_8")],
)
def test_position_folder_tags(spec, tag):
    assert parse_position(spec).tag == tag
