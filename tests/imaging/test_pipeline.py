"""Pipelines: the text and JSON forms, their errors, round trips, and running one on an image."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pixmill.errors import ImageTooLarge, InvalidPipeline
from pixmill.imaging.ops import operations
from pixmill.imaging.pipeline import MAX_SPEC_CHARS, MAX_STEPS, Pipeline, Step, parse_pipeline, run_pipeline

EXAMPLE_TEXT = "grayscale | blur(ksize=7) | threshold(value=100)"
EXAMPLE_JSON = [{"op": "grayscale"}, {"op": "blur", "params": {"ksize": 7}},
                {"op": "threshold", "params": {"value": 100}}]


def error_of(spec) -> str:
    """The message of the InvalidPipeline that parsing spec raises."""
    with pytest.raises(InvalidPipeline) as caught:
        parse_pipeline(spec)
    return caught.value.message


def test_text_and_json_forms_are_one_pipeline():
    from_text = parse_pipeline(EXAMPLE_TEXT)
    assert parse_pipeline(EXAMPLE_JSON) == from_text
    assert parse_pipeline(json.dumps(EXAMPLE_JSON)) == from_text
    assert [s.op for s in from_text.steps] == ["grayscale", "blur", "threshold"]
    assert from_text.steps[1].kwargs == {"ksize": 7, "sigma": 0.0}
    assert from_text.text() == EXAMPLE_TEXT
    assert str(from_text) == EXAMPLE_TEXT
    assert from_text.slug() == "grayscale+blur+threshold"


@pytest.mark.parametrize("spec", [EXAMPLE_TEXT, "grayscale", "rotate(angle=-12.5, expand=false)",
                                  "resize(width=800) | crop(x=3, width=auto)", "threshold(mode=otsu)"])
def test_round_trips(spec):
    pipeline = parse_pipeline(spec)
    assert parse_pipeline(pipeline.text()) == pipeline
    assert parse_pipeline(pipeline.to_json()) == pipeline
    assert parse_pipeline(json.dumps(pipeline.to_json())) == pipeline
    assert pickle.loads(pickle.dumps(pipeline)) == pipeline


def test_json_shorthands():
    assert parse_pipeline('{"op": "blur", "params": {"ksize": 7}}') == parse_pipeline("blur(ksize=7)")
    assert parse_pipeline(["grayscale", {"op": "blur"}]) == parse_pipeline("grayscale | blur")
    assert parse_pipeline([{"op": "blur", "params": {"ksize": "7"}}]) == parse_pipeline("blur(ksize=7)")
    assert parse_pipeline([{"op": "rotate", "params": {"expand": False}}]) == parse_pipeline("rotate(expand=no)")


def test_the_error_from_the_issue():
    assert error_of("grayscale | blur(ksize=8)") == "step 2 blur: ksize must be an odd integer in 1..99, got 8"
    assert error_of([{"op": "grayscale"}, {"op": "blur", "params": {"ksize": 8}}]) == \
        "step 2 blur: ksize must be an odd integer in 1..99, got 8"


@pytest.mark.parametrize("spec, expected", [
    ("grayscale | blurr", "step 2: unknown operation 'blurr' (did you mean blur?)"),
    ("frobnicate", "step 1: unknown operation 'frobnicate'"),
    ('[{"op": "nope"}]', "step 1: unknown operation 'nope'"),
    ("blur(size=3)", "step 1 blur: unknown parameter 'size'; allowed: ksize, sigma"),
    ("grayscale(x=1)", "step 1 grayscale: unknown parameter 'x'; allowed: none"),
    ("blur(ksize=3, ksize=5)", "step 1 blur: parameter 'ksize' is given twice"),
    ("blur(ksize=abc)", "step 1 blur: ksize must be an odd integer in 1..99, got abc"),
    ("blur(ksize=3.5)", "step 1 blur: ksize must be an odd integer in 1..99, got 3.5"),
    ("blur(sigma=nan)", "step 1 blur: sigma must be a number in 0..100, got nan"),
    ("threshold(mode=median)", "step 1 threshold: mode must be one of binary, binary_inv, trunc, tozero, "
                               "tozero_inv, otsu, triangle, adaptive, got median"),
    ("rotate(expand=maybe)", "step 1 rotate: expand must be true or false, got maybe"),
    ("blur(ksize=)", "step 1 blur: ksize must be an odd integer in 1..99, got ''"),
    ("resize(width=0)", "step 1 resize: width must be an integer in 1..30000 (or empty for automatic), got 0"),
    ("edge_detection(low=300, high=100)", "step 1 edge_detection: low must not be above high"),
    ("blur(7)", "step 1 blur: cannot read the parameters '7'"),
    ("blur(ksize=7", "step 1: cannot read 'blur(ksize=7'"),
    ("grayscale || blur", "step 2: empty step"),
    ("grayscale |", "step 2: empty step"),
    ("gray-scale", "step 1: 'gray-scale' is not an operation name"),
    ('[{"op": "blur"', "pipeline is not valid JSON"),
    ("[1]", "step 1: each step must be an object"),
    ('[{"op": "blur", "params": [7]}]', "step 1 blur: params must be an object"),
    ('[{"op": "blur", "params": {"ksize": [7]}}]', "step 1 blur: parameter values must be numbers"),
    ('[{"op": "blur", "parameters": {}}]', "step 1: unknown key 'parameters'"),
    ('[{"op": 7}]', "step 1: 7 is not an operation name"),
    ('"blur"', "step 1: '\"blur\"' is not an operation name"),
    (5, "pipeline must be text like"),
    ("", "pipeline is empty"),
    ("   \n\t ", "pipeline is empty"),
    ("[]", "pipeline is empty"),
])
def test_invalid_pipelines_say_what_is_wrong(spec, expected):
    assert error_of(spec).startswith(expected)


def test_step_limit():
    assert len(parse_pipeline(" | ".join(["grayscale"] * MAX_STEPS)).steps) == MAX_STEPS
    too_many = MAX_STEPS + 1
    expected = f"pipeline has {too_many} steps, over the limit of {MAX_STEPS}"
    assert error_of(" | ".join(["grayscale"] * too_many)) == expected
    assert error_of([{"op": "grayscale"}] * too_many) == expected


def test_length_limit():
    assert error_of("grayscale" + " " * 5000 + "| blur").startswith("pipeline is 5015 characters long")


def _long_value(param):
    if param.kind == "choice":
        return max(param.choices, key=len)
    if param.kind == "bool":
        return False
    if param.kind == "int":
        return int(param.max) if not param.odd or param.max % 2 else int(param.max) - 1
    return param.min + (param.max - param.min) / 3 if param.min < 0 else param.max / 3


@pytest.mark.parametrize("op", operations(), ids=lambda op: op.name)
def test_longest_pipeline_fits_the_length_limit(op):
    """MAX_STEPS steps with long values still re-parse from JSON text, as storage relies on."""
    pipeline = parse_pipeline([{"op": op.name, "params": {p.name: _long_value(p) for p in op.params}}] * MAX_STEPS)
    stored = json.dumps(pipeline.to_json())
    assert len(stored) <= MAX_SPEC_CHARS and parse_pipeline(stored) == pipeline


def test_quoted_values():
    plain = parse_pipeline("threshold(value=90, mode=otsu)")
    assert parse_pipeline('threshold(value="90", mode="otsu")') == plain
    assert parse_pipeline("threshold(value='90', mode='otsu')") == plain
    assert parse_pipeline("threshold(mode=OTSU, value=90)") == plain
    # a '|', ',' or ')' inside quotes belongs to the value, not to the syntax
    assert error_of("threshold(mode='otsu|binary') | grayscale").endswith("got otsu|binary")
    assert error_of('threshold(mode="a, b)")').endswith("got a, b)")


@pytest.mark.parametrize("spec", ["grayscale|blur(ksize=7)", "  grayscale  |  blur( ksize = 7 )  ",
                                  "\ngrayscale\n|\tblur(ksize=7,)\n", "grayscale | blur (ksize=7)",
                                  "grayscale | blur(ksize=7, sigma=0)"])
def test_whitespace_and_defaults_do_not_matter(spec):
    assert parse_pipeline(spec) == parse_pipeline("grayscale | blur(ksize=7)")


def test_nullable_parameters():
    auto = parse_pipeline("resize(width=auto, scale=0.25)")
    assert auto == parse_pipeline("resize(scale=0.25)") == parse_pipeline('[{"op": "resize", "params": '
                                                                           '{"width": null, "scale": 0.25}}]')
    assert auto.steps[0].kwargs["width"] is None


def test_pipelines_are_values():
    pipeline = parse_pipeline(EXAMPLE_TEXT)
    assert parse_pipeline(pipeline) is pipeline
    assert hash(pipeline) == hash(parse_pipeline(EXAMPLE_JSON))
    assert pipeline.steps[0] == Step("grayscale", ())
    assert isinstance(pipeline, Pipeline)


def test_huge_json_number_is_invalid_pipeline():
    huge = '[{"op": "blur", "params": {"ksize": 1' + "0" * 400 + "}}]"
    assert "ksize must be an odd integer in 1..99" in error_of(huge)


def test_deeply_nested_json_is_invalid_pipeline():
    assert "nested too deeply" in error_of("[" * 3000)


@pytest.mark.parametrize("params", ["0", '""', "false", '"x"', "[]"])
def test_params_that_are_not_an_object_are_refused(params):
    assert "params must be an object" in error_of('[{"op": "blur", "params": ' + params + "}]")


def test_an_operation_error_without_a_message_becomes_processing_failed(monkeypatch):
    from pixmill.errors import ProcessingFailed

    def broken(self, image, **params):
        raise RuntimeError()

    monkeypatch.setattr("pixmill.imaging.ops.registry.Operation.apply", broken)
    with pytest.raises(ProcessingFailed, match="step 1 grayscale: RuntimeError"):
        run_pipeline(parse_pipeline("grayscale"), np.zeros((2, 2), np.uint8))


def test_run_pipeline_applies_the_steps_in_order():
    image = np.zeros((8, 10, 3), np.uint8)
    image[:, :5] = 255
    out, notes = run_pipeline(parse_pipeline("grayscale | color_inversion | crop(x=4, width=2)"), image)
    assert out.tolist() == [[0, 255]] * 8 and notes == []


def test_run_pipeline_refuses_an_oversized_output_before_computing_it():
    image = np.zeros((100, 100, 3), np.uint8)
    with pytest.raises(ImageTooLarge, match=r"step 2 resize: the output would be 800×800"):
        run_pipeline(parse_pipeline("grayscale | resize(scale=8)"), image, max_pixels=500_000)
    with pytest.raises(ImageTooLarge, match=r"step 1 pad"):
        run_pipeline(parse_pipeline("pad(size=2000)"), image, max_pixels=10_000_000)


def test_run_pipeline_converts_16_bit_for_8_bit_operations_and_says_so():
    image = np.full((6, 6, 4), 40000, np.uint16)
    out, notes = run_pipeline(parse_pipeline("blur | denoise | blur"), image)
    assert out.dtype == np.uint8 and out.shape == (6, 6, 4)
    assert notes == ["step 2 denoise: converted 16-bit to 8-bit, which this operation needs"]


def _check_refuses(op, params: dict) -> bool:
    if op.check is None:
        return False
    try:
        op.check({**op.defaults(), **{k: op.param(k).coerce(v) for k, v in params.items()}})
    except ValueError:
        return True
    return False


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_random_valid_pipelines_round_trip(data, op_params):
    ops = data.draw(st.lists(st.sampled_from(operations()), min_size=1, max_size=MAX_STEPS), label="ops")
    spec = [{"op": op.name, "params": data.draw(op_params(op), label=op.name)} for op in ops]
    try:
        pipeline = parse_pipeline(spec)
    except InvalidPipeline as exc:  # only a cross-parameter check may refuse values in the declared ranges
        assert any(_check_refuses(op, step["params"]) for op, step in zip(ops, spec)), exc.message
        return
    assert parse_pipeline(pipeline.text()) == pipeline
    assert parse_pipeline(json.dumps(pipeline.to_json())) == pipeline
    assert parse_pipeline(pipeline.to_json()) == pipeline
    assert parse_pipeline(json.dumps(spec)) == pipeline


TOKENS = ([op.name for op in operations()] + sorted({p.name for op in operations() for p in op.params})
          + ["(", ")", "=", ",", "|", " ", "'", '"', "[", "]", "{", "}", ":", '"op"', '"params"',
             "7", "-1", "0.5", "1e309", "nan", "true", "null", "auto", "otsu", "\n", "\\", "é", "\x00"])


@settings(max_examples=200, deadline=None)
@given(text=st.lists(st.sampled_from(TOKENS), max_size=30).map("".join) | st.text(max_size=200))
def test_random_text_raises_only_invalid_pipeline(text):
    try:
        pipeline = parse_pipeline(text)
    except InvalidPipeline as exc:
        assert exc.message
        return
    assert parse_pipeline(pipeline.text()) == pipeline


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats() | st.text(max_size=12)
    | st.sampled_from([op.name for op in operations()]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["op", "params", "ksize", "mode", "x"]) | st.text(max_size=5), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(spec=JSON_VALUES)
def test_random_json_raises_only_invalid_pipeline(spec):
    for form in (spec, json.dumps(spec)):
        try:
            pipeline = parse_pipeline(form)
        except InvalidPipeline as exc:
            assert exc.message
            continue
        assert parse_pipeline(pipeline.text()) == pipeline
