import random

import pytest

from clinkd.boxes import Box, BoxError, BoxStyle, convert_markup, format_ref, json_boxes, json_to_markup, parse_boxes


def _random_boxes(n=200, seed=0):
    rng = random.Random(seed)
    for _ in range(n):
        x1, x2 = sorted(rng.randint(0, 1000) for _ in range(2))
        y1, y2 = sorted(rng.randint(0, 1000) for _ in range(2))
        yield Box(x1, y1, x2, y2)


@pytest.mark.parametrize("style", list(BoxStyle))
def test_text_round_trip_every_style(style):
    for box in _random_boxes():
        assert Box.from_text(box.to_text(style)) == box
        assert parse_boxes(box.to_text(style), style) == [box]


def test_text_forms():
    box = Box(112, 305, 498, 702)
    assert box.to_text("qwen-vl") == "<box>(112,305),(498,702)</box>"
    assert box.to_text("qwen2-vl") == "<|box_start|>(112,305),(498,702)<|box_end|>"
    assert box.to_text("plain") == "(112,305),(498,702)"
    assert box.to_text("qwen3-vl") == '{"bbox_2d": [112, 305, 498, 702]}'


QWEN3_VL_ANSWER = (
    '```json\n[\n\t{"bbox_2d": [112, 305, 498, 702], "label": "left \\"kidney\\""},\n\t{"point_2d": [40, 60]}\n]\n```'
)


def test_qwen3_vl_json_boxes_and_points_parse_into_the_canonical_box():
    expected = [Box(112, 305, 498, 702), Box(40, 60, 40, 60)]  # a point is the zero-size box at it
    assert json_boxes(QWEN3_VL_ANSWER) == parse_boxes(QWEN3_VL_ANSWER) == expected
    assert parse_boxes('{"bbox_2d": [1, 2, 3, 4], "label": "a"} <box>(5,6),(7,8)</box>') == [
        Box(5, 6, 7, 8)
    ]  # tags first
    assert parse_boxes('{"bbox_2d": [1, 2, 3') == []  # truncated: no box, no crash
    with pytest.raises(BoxError, match="outside the 0–1000"):
        json_boxes('{"bbox_2d": [1, 2, 3, 1001]}')


def test_med_grit_markup_becomes_qwen3_vl_json_and_back():
    question = "Where is the <ref>liver</ref>? Not <|box_start|>(1,2),(3,4)<|box_end|>."
    answer = "<ref>liver</ref><box>(112,305),(498,702)</box>"
    assert convert_markup(question, "qwen3-vl") == 'Where is the liver? Not {"bbox_2d": [1, 2, 3, 4]}.'
    as_json = convert_markup(answer, "qwen3-vl")
    assert as_json == '{"bbox_2d": [112, 305, 498, 702], "label": "liver"}'
    assert json_to_markup(as_json) == answer
    assert (
        json_to_markup(QWEN3_VL_ANSWER)
        == '<ref>left "kidney"</ref><box>(112,305),(498,702)</box><box>(40,60),(40,60)</box>'
    )
    assert (
        json_to_markup('It is {"bbox_2d": [1, 2, 3, 4]}.', "qwen2-vl") == "It is <|box_start|>(1,2),(3,4)<|box_end|>."
    )
    for broken in ('{"bbox_2d": [9, 9, 1, 1]}', '{"bbox_2d": [1, 2, 3, 4], "label": "a\\q"}'):  # a bad box or label
        assert json_to_markup(broken) == broken  # is left as written


def test_pixel_round_trip_is_lossless_in_float_and_for_integer_boxes():
    rng = random.Random(1)
    for box in _random_boxes():
        width, height = rng.randint(20, 4000), rng.randint(20, 4000)
        back = Box.from_pixels(*box.to_pixels(width, height), width, height)
        assert back.rounded() == box
        assert max(abs(a - b) for a, b in zip(back.__dict__.values(), box.__dict__.values())) < 1e-9


def test_pixel_conversion_of_a_qwen25_style_box():
    box = Box.from_pixels(56, 28, 112, 84, width=224, height=112)
    assert box == Box(250, 250, 500, 750)
    assert box.to_pixels(224, 112) == (56, 28, 112, 84)


@pytest.mark.parametrize(
    "text, message",
    [
        ("<box>(500,1),(400,9)</box>", "x2 < x1"),
        ("<box>(1,50),(4,9)</box>", "y2 < y1"),
        ("<box>(1,2),(3,1001)</box>", "outside the 0–1000"),
        ("<box>(1,2),(3)</box>", "unparseable box"),
        ("<|box_start|>(a,b),(c,d)<|box_end|>", "unparseable box"),
    ],
)
def test_bad_boxes_raise_with_the_raw_box(text, message):
    with pytest.raises(BoxError, match=message):
        parse_boxes(text)


def test_parse_prefers_tagged_boxes_and_falls_back_to_plain_pairs():
    text = "A (1,2),(3,4) B <box>(10,20),(30,40)</box> C <|box_start|>(5,6),(7,8)<|box_end|>"
    assert parse_boxes(text) == [Box(10, 20, 30, 40), Box(5, 6, 7, 8)]
    assert parse_boxes("near ( 1, 2 ),(3,4)") == [Box(1, 2, 3, 4)]
    with pytest.raises(BoxError, match="exactly one box"):
        Box.from_text("none here")


def test_convert_markup_round_trip_keeps_coordinates_and_refs():
    bird = "<ref>left kidney</ref><box>(1,2),(30,40)</box> and <ref>liver</ref><box>(5,6),(70,80)</box>"
    qwen2 = convert_markup(bird, "qwen2-vl")
    assert qwen2 == (
        "<|object_ref_start|>left kidney<|object_ref_end|><|box_start|>(1,2),(30,40)<|box_end|> and "
        "<|object_ref_start|>liver<|object_ref_end|><|box_start|>(5,6),(70,80)<|box_end|>"
    )
    assert convert_markup(qwen2, "qwen-vl") == bird
    assert format_ref("liver", "qwen2-vl") == "<|object_ref_start|>liver<|object_ref_end|>"


def test_iou_follows_birds_rule():
    assert Box(0, 0, 10, 10).iou(Box(0, 0, 10, 10)) == 1.0
    assert Box(0, 0, 10, 10).iou(Box(5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert Box(0, 0, 10, 10).iou(Box(20, 20, 30, 30)) == 0.0
    assert Box(5, 5, 5, 5).iou(Box(5, 5, 5, 5)) == 0.0  # zero union
