"""One request, checked once (goae.request): every form each field takes, every bad input and its message,
and the checks across fields (box and face index, what the domain accepts, the loaded edit names)."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from goae.domains import CAT, DOMAINS, HUMAN
from goae.edit import EditDirection
from goae.request import (MAX_FACE_INDEX, Request, RequestError, check_angles, parse_box, parse_camera, parse_edits,
                          parse_face_index, parse_text, parse_view, parse_views)


def _refused(message: str):
    """pytest.raises(RequestError) matching `message` literally."""
    return pytest.raises(RequestError, match=re.escape(message))


# ----------------------------------------------------------------------------------------------- views
def test_views_forms():
    assert parse_views([[30, 0], [-30.5, 10]]) == [(30.0, 0.0), (-30.5, 10.0)]
    assert parse_views(((30, 0),)) == [(30.0, 0.0)]                       # tuples: a checker's own output
    assert parse_views([["15", "-5"]]) == [(15.0, -5.0)]                  # numbers as JSON strings
    assert parse_views([[-0.0, -0.0]]) == [(0.0, 0.0)] and math.copysign(1, parse_views([[-0.0, 0]])[0][0]) == 1
    for empty in (None, "", [], ()):
        assert parse_views(empty) == []
    assert parse_views([[180, 90], [-180, -90]]) == [(180.0, 90.0), (-180.0, -90.0)]   # the limits themselves
    assert parse_text("views", "-30:0,30,0:15") == [(-30.0, 0.0), (30.0, 0.0), (0.0, 15.0)]  # pitch defaults to 0


@pytest.mark.parametrize("value, message", [
    ("30:0", "views must be a list of [yaw, pitch] pairs in degrees, e.g. [[-30, 0], [30, 0]]; got '30:0'"),
    ([30, 0], "views must be a list of [yaw, pitch] pairs"),
    ([[1, 2, 3]], "views must be a list of [yaw, pitch] pairs"),
    ({"yaw": 1}, "views must be a list of [yaw, pitch] pairs"),
    ([[float("nan"), 0]], "view yaw must be a finite number, got nan"),
    ([[0, float("inf")]], "view pitch must be a finite number, got inf"),
    ([[400, 0]], "view yaw must be between -180 and 180, got 400"),
    ([[0, -91]], "view pitch must be between -90 and 90, got -91"),
    ([["left", 0]], "view yaw must be a number, got 'left'"),
    ([[None, 0]], "view yaw must be a number, got None"),
])
def test_bad_views(value, message):
    with _refused(message):
        parse_views(value)


def test_views_cap():
    assert len(parse_views([[0, 0]] * 16, max_views=16)) == 16
    with _refused("at most 16 views per call, got 17"):
        parse_views([[0, 0]] * 17, max_views=16)


@pytest.mark.parametrize("text, message", [
    ("nan:0", "view yaw must be a finite number, got 'nan'"),
    ("0:inf", "view pitch must be a finite number, got 'inf'"),
    ("1e400:0", "view yaw must be a finite number, got '1e400'"),
    ("-inf", "view yaw must be a finite number, got '-inf'"),
    ("30:0,", "view yaw must be a number, got ''"),
    ("a:b", "view yaw must be a number, got 'a'"),
    ("1:2:3", "view pitch must be a number, got '2:3'"),
    ("200:0", "view yaw must be between -180 and 180, got 200"),
])
def test_bad_views_text(text, message):
    with _refused(message):
        parse_text("views", text)


def test_one_view_and_angles():
    assert parse_view([20, -5]) == (20.0, -5.0) and parse_text("view", "-20:5") == (-20.0, 5.0)
    assert parse_text("view", "25") == (25.0, 0.0)
    assert check_angles(10, "-3") == (10.0, -3.0)
    with _refused("yaw must be between -180 and 180, got 181"):
        check_angles(181, 0, what="")                                     # the app's bare yaw/pitch sliders
    with _refused("pitch must be a finite number, got nan"):
        check_angles(0, float("nan"), what="")
    with _refused("view must be [yaw, pitch] in degrees; got [1]"):
        parse_view([1])
    with _refused("view must be one yaw:pitch in degrees, got '0:0,1:1'"):
        parse_text("view", "0:0,1:1")


# ---------------------------------------------------------------------------------------------- camera
def test_camera_forms():
    assert parse_camera([10, -5]) == (10.0, -5.0) and parse_camera((0, 5)) == (0.0, 5.0)
    assert parse_text("camera", "10:-5") == (10.0, -5.0) and parse_text("camera", "12") == (12.0, 0.0)
    for empty in (None, "", []):
        assert parse_camera(empty) is None


@pytest.mark.parametrize("value, message", [
    ([1], "camera must be [yaw, pitch] in degrees; got [1]"),
    ([1, 2, 3], "camera must be [yaw, pitch] in degrees; got [1, 2, 3]"),
    ("10:5", "camera must be [yaw, pitch] in degrees; got '10:5'"),
    (5, "camera must be [yaw, pitch] in degrees; got 5"),
    ([float("nan"), 0], "camera yaw must be a finite number, got nan"),
    ([0, 100], "camera pitch must be between -90 and 90, got 100"),
])
def test_bad_camera(value, message):
    with _refused(message):
        parse_camera(value)


@pytest.mark.parametrize("text, message", [
    ("10:0,5:0", "camera must be one yaw:pitch in degrees, got '10:0,5:0'"),
    ("orbit", "camera yaw must be a number, got 'orbit'"),
    ("0:nan", "camera pitch must be a finite number, got 'nan'"),
])
def test_bad_camera_text(text, message):
    with _refused(message):
        parse_text("camera", text)


# ------------------------------------------------------------------------------------------------- box
def test_box_forms():
    assert parse_box([70, 0, 440, 300]) == (70.0, 0.0, 440.0, 300.0)
    assert parse_box((70, 0, 440, 300)) == (70.0, 0.0, 440.0, 300.0)
    assert parse_box("70, 0,440 ,300") == (70.0, 0.0, 440.0, 300.0)   # the app's text box: spaces allowed
    assert parse_text("box", "1,2,30,40") == (1.0, 2.0, 30.0, 40.0)
    for empty in (None, "", []):
        assert parse_box(empty) is None


@pytest.mark.parametrize("value, message", [
    ("1,2,3", "the box must be left,top,right,bottom in pixels, e.g. 120,40,330,260; got '1,2,3'"),
    ([1, 2, 3, 4, 5], "the box must be left,top,right,bottom in pixels, e.g. 120,40,330,260; got [1, 2, 3, 4, 5]"),
    ({"l": 1}, "the box must be left,top,right,bottom in pixels"),
    (7, "the box must be left,top,right,bottom in pixels"),
    ("1,2,nan,4", "box coordinate must be a finite number, got 'nan'"),
    ([1, 2, float("inf"), 4], "box coordinate must be a finite number, got inf"),
    ("1,2,x,4", "box coordinate must be a number, got 'x'"),
])
def test_bad_box(value, message):
    with _refused(message):
        parse_box(value)


# ------------------------------------------------------------------------------------------ face index
def test_face_index():
    assert parse_face_index(None) is None and parse_face_index("") is None
    assert parse_face_index(0) == 0 and parse_face_index(2.0) == 2 and parse_face_index("3") == 3
    assert parse_face_index(np.int64(1)) == 1 and parse_face_index(MAX_FACE_INDEX) == MAX_FACE_INDEX
    assert parse_text("face_index", "1") == 1


@pytest.mark.parametrize("value, message", [
    (-1, "face index must be between 0 and 10000, got -1"),
    (MAX_FACE_INDEX + 1, "face index must be between 0 and 10000, got 10001"),
    (1.5, "face index must be a whole number, got 1.5"),
    ("nan", "face index must be a finite number, got 'nan'"),
    ("abc", "face index must be a number, got 'abc'"),
    (True, "face index must be a whole number, got True"),
    ([0], "face index must be a whole number, got [0]"),
])
def test_bad_face_index(value, message):
    with _refused(message):
        parse_face_index(value)


def test_face_index_named_as_the_caller_calls_it():
    with _refused("face_index must be a whole number, got [0]"):
        parse_face_index([0], what="face_index")                      # the API parameter's own name


# ----------------------------------------------------------------------------------------------- edits
def _directions(*names: str) -> dict[str, EditDirection]:
    t = torch.zeros(14, 512)
    return {n: EditDirection(n, t, "human") for n in names}


def test_edits_forms():
    assert parse_edits({"age": 2, "glass": "-1"}) == {"age": 2.0, "glass": -1.0}
    assert parse_edits({" age ": 1}) == {"age": 1.0}
    assert parse_text("edits", "age=2, glasses=-1") == {"age": 2.0, "glasses": -1.0}
    for empty in (None, "", {}):
        assert parse_edits(empty) == {}
    # Given the loaded directions, names are resolved (the 'glasses' alias) and checked.
    assert parse_edits({"glasses": 1, "age": 0.5}, _directions("age", "glass")) == {"glass": 1.0, "age": 0.5}


@pytest.mark.parametrize("value, message", [
    ([1], 'edits must be strengths by direction name, e.g. {"age": 2}; got [1]'),
    ("age=2", 'edits must be strengths by direction name, e.g. {"age": 2}; got \'age=2\''),
    ({"": 1}, "edits must be strengths by direction name"),
    ({1: 1}, "edits must be strengths by direction name"),
    ({"age": float("nan")}, "strength of 'age' must be a finite number, got nan"),
    ({"age": "inf"}, "strength of 'age' must be a finite number, got 'inf'"),
    ({"age": "lots"}, "strength of 'age' must be a number, got 'lots'"),
])
def test_bad_edits(value, message):
    with _refused(message):
        parse_edits(value)


@pytest.mark.parametrize("text, message", [
    ("age", "edits must be name=strength[,name=strength...], got 'age'"),
    ("age=1,=2", "edits must be name=strength[,name=strength...], got '=2'"),
    ("age=nan", "strength of 'age' must be a finite number, got 'nan'"),
    ("age=", "strength of 'age' must be a number, got ''"),
])
def test_bad_edits_text(text, message):
    with _refused(message):
        parse_text("edits", text)


def test_unknown_edit_names_say_what_is_available():
    with _refused("unknown edit(s) ['smile']; available: ['age', 'glass']"):
        parse_edits({"smile": 1}, _directions("age", "glass"))
    with _refused("unknown edit(s) ['smile']; available: [] (`smile.npy`: for another model)"):
        parse_edits({"smile": 1}, {}, notes=["`smile.npy`: for another model"])


def test_text_fields_are_named():
    with pytest.raises(ValueError, match="no command-line form for 'camra'"):
        parse_text("camra", "1:2")


# --------------------------------------------------------------------------------------------- request
def test_request_parses_every_field():
    req = Request.parse(views=[[30, 0]], edits={"glasses": 1}, box="70,0,440,300", camera=[10, -5], domain="cat",
                        directions=_directions("glass"), max_views=4)
    assert req == Request(views=((30.0, 0.0),), edits={"glass": 1.0}, box=(70.0, 0.0, 440.0, 300.0),
                          camera=(10.0, -5.0), face_index=None)
    assert req.align_options() == {"box": (70.0, 0.0, 440.0, 300.0), "yaw": 10.0, "pitch": -5.0}
    assert Request.parse() == Request() and Request().align_options() == {}
    assert Request.parse(face_index="1", domain=HUMAN).face_index == 1
    # What a checker returned goes through again unchanged (the CLI parses text first, then the request).
    assert Request.parse(views=parse_text("views", "-30:0"), box=parse_text("box", "1,2,30,40"),
                         camera=parse_text("camera", "5:0"), domain=CAT).views == ((-30.0, 0.0),)
    with _refused("at most 1 views per call, got 2"):
        Request.parse(views=[[0, 0], [1, 1]], max_views=1)
    with _refused("unknown edit(s) ['smile']"):
        Request.parse(edits={"smile": 1}, directions=_directions("age"))


def test_box_and_face_index_exclude_each_other():
    with _refused("box and face index exclude each other"):
        Request.parse(box=[1, 2, 30, 40], face_index=0, domain="cat")


def test_the_domain_decides_on_box_and_camera():
    message = ("box and camera are for cat photos; these weights invert human portraits, whose crop and camera "
               "come from the face landmarks")
    for options in ({"box": [1, 2, 30, 40]}, {"camera": [10, 0]}, {"box": "1,2,30,40", "camera": [0, 0]}):
        with _refused(message):
            Request.parse(domain="human", **options)
        assert Request.parse(domain=CAT, **options).align_options()         # the cat domain takes them
    assert Request.parse(box=[1, 2, 30, 40]).box == (1.0, 2.0, 30.0, 40.0)  # no domain given: not checked here
    with pytest.raises(ValueError, match="unknown domain 'dog'"):
        Request.parse(domain="dog")
    # Empty options are "not given", for every domain.
    assert Request.parse(box="", camera=[], domain=HUMAN) == Request()


def test_domains_own_their_choices():
    assert (HUMAN.accepts_box, HUMAN.accepts_camera, HUMAN.supports_clips) == (False, False, True)
    assert (CAT.accepts_box, CAT.accepts_camera, CAT.supports_clips) == (True, True, False)
    assert (HUMAN.aligner, CAT.aligner) == ("align_face", "align_cat")
    assert (HUMAN.face_noun, CAT.face_noun) == ("Face", "Cat face")
    import goae.align
    from goae.presets import PRESETS
    for d in DOMAINS.values():
        assert callable(getattr(goae.align, d.aligner)) and PRESETS[d.preset].domain == d.name
        assert all(n.startswith(d.direction_prefix or "") for n in d.official_directions)
    assert HUMAN.photo_options_error() is None and CAT.photo_options_error((1, 2, 3, 4), (0, 0)) is None


def test_clips_take_the_same_rules():
    from goae.video import VideoOptions

    assert VideoOptions(view=[10, -0.0], face_index=2.0).view == (10.0, 0.0)
    with _refused("view yaw must be between -180 and 180, got 400"):
        VideoOptions(view=(400, 0))
    with _refused("face index must be between 0 and 10000, got -1"):
        VideoOptions(face_index=-1)
