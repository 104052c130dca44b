"""One request, checked once: the views, edits, box, camera and face index of an inversion, parsed and
validated in one place for the command line, the app and its API.

Each field has one checker that takes the forms callers hold today (JSON values: lists, dicts, numbers,
numeric strings), and `parse_text` reads the command line's spellings:

  field       JSON form (app / API / library)       command-line text
  views       [[yaw, pitch], ...] degrees           "yaw:pitch,yaw:pitch" (pitch defaults to 0)
  view        [yaw, pitch]                          "yaw:pitch"
  camera      [yaw, pitch]                          "yaw:pitch"
  box         [left, top, right, bottom] source px  "left,top,right,bottom" (also the app's text box)
  edits       {"name": strength}                    "name=strength,name=strength"
  face_index  0, 1, ... (left to right; None/"" = the largest)

`Request.parse` checks them together, with what the domain accepts (goae.domains: a box or camera where the
domain takes none) and, given the loaded directions, the edit names. Every problem is one RequestError
(a ValueError) whose message names the field and says what is expected.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from goae.domains import Domain, get_domain
from goae.edit import resolve_names
from goae.export.errors import finite, whole

MAX_FACE_INDEX = 10000       # faces are kept up to goae.align's cap; beyond this an index is a typo
YAW_LIMIT, PITCH_LIMIT = 180.0, 90.0   # degrees from frontal; a domain's aligner may allow less (cats)


class RequestError(ValueError):
    """A request option that cannot be used, with what was expected."""


def _empty(value) -> bool:
    """None, "", [] or {}: the option was left out."""
    return value is None or (isinstance(value, (str, list, tuple, dict)) and len(value) == 0)


def _number(value, what: str, low=None, high=None, integer: bool = False):
    try:
        return (whole if integer else finite)(value, what, low, high)
    except ValueError as e:
        raise RequestError(str(e)) from None


def _pair(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2


def check_angles(yaw, pitch, what: str = "view") -> tuple[float, float]:
    """(yaw, pitch) in degrees: finite, yaw within ±180, pitch within ±90 (+ 0.0: no -0 in names)."""
    return (_number(yaw, f"{what} yaw".strip(), -YAW_LIMIT, YAW_LIMIT) + 0.0,
            _number(pitch, f"{what} pitch".strip(), -PITCH_LIMIT, PITCH_LIMIT) + 0.0)


def parse_view(value, what: str = "view") -> tuple[float, float]:
    """One [yaw, pitch] in degrees."""
    if not _pair(value):
        raise RequestError(f"{what} must be [yaw, pitch] in degrees; got {value!r}")
    return check_angles(*value, what=what)


def parse_views(value, max_views: int | None = None) -> list[tuple[float, float]]:
    """[[yaw, pitch], ...] in degrees, at most `max_views` of them; left out -> []."""
    if _empty(value):
        return []
    if not isinstance(value, (list, tuple)) or not all(_pair(v) for v in value):
        raise RequestError(f"views must be a list of [yaw, pitch] pairs in degrees, e.g. [[-30, 0], [30, 0]]; "
                           f"got {value!r}")
    if max_views is not None and len(value) > max_views:
        raise RequestError(f"at most {max_views} views per call, got {len(value)}")
    return [check_angles(yaw, pitch) for yaw, pitch in value]


def parse_camera(value) -> tuple[float, float] | None:
    """The photo's camera, [yaw, pitch] in degrees from frontal (domains that accept one: cats); left out -> None."""
    return None if _empty(value) else parse_view(value, "camera")


def parse_box(value) -> tuple[float, float, float, float] | None:
    """The head's box in source pixels, [l, t, r, b] or the text "l,t,r,b"; left out -> None (detect).
    Its size and place in the photo are the aligner's to check (it has the photo)."""
    if _empty(value):
        return None
    parts = value.replace(" ", "").split(",") if isinstance(value, str) else value
    if not isinstance(parts, (list, tuple)) or len(parts) != 4:
        raise RequestError(f"the box must be left,top,right,bottom in pixels, e.g. 120,40,330,260; got {value!r}")
    return tuple(_number(v, "box coordinate") for v in parts)


def parse_face_index(value, what: str = "face index") -> int | None:
    """Which face, 0-based from the left; left out -> None (the largest)."""
    if value is None or value == "":
        return None
    return _number(value, what, 0, MAX_FACE_INDEX, integer=True)


def parse_edits(value, directions: Mapping | None = None, notes: Sequence[str] = ()) -> dict[str, float]:
    """{direction name: strength} with finite strengths; left out -> {}. Given the loaded `directions`, names
    are resolved (aliases such as 'glasses' -> 'glass') and unknown ones refused, with the `notes` that say why
    a file was left out (goae.edit.resolve_names)."""
    if _empty(value):
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and k.strip() for k in value):
        raise RequestError(f'edits must be strengths by direction name, e.g. {{"age": 2}}; got {value!r}')
    edits = {k.strip(): _number(v, f"strength of {k.strip()!r}") for k, v in value.items()}
    if directions is None:
        return edits
    try:
        return resolve_names(edits, directions, list(notes))
    except ValueError as e:
        raise RequestError(str(e)) from None


# ------------------------------------------------------------------------------------- command-line text
def _text_views(text: str) -> list[list[str]]:
    """'yaw:pitch,yaw:pitch' -> [[yaw, pitch], ...] as text (a missing pitch is 0)."""
    pairs = []
    for item in text.split(","):
        yaw, _, pitch = item.partition(":")
        pairs.append([yaw, pitch or "0"])
    return pairs


def _text_edits(text: str) -> dict[str, str]:
    edits = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise RequestError(f"edits must be name=strength[,name=strength...], got {item!r}")
        edits[name.strip()] = value
    return edits


def _text_one_view(text: str, what: str) -> tuple[float, float]:
    pairs = _text_views(text)
    if len(pairs) != 1:
        raise RequestError(f"{what} must be one yaw:pitch in degrees, got {text!r}")
    return check_angles(*pairs[0], what=what)


def parse_text(name: str, text: str):
    """A field from its command-line spelling (module docstring) -> the checked value, as the field's checker
    returns it. `name`: views, view, camera, box, edits or face_index."""
    if name == "views":
        return parse_views(_text_views(text))
    if name in ("view", "camera"):
        return _text_one_view(text, name)
    if name == "box":
        return parse_box(text)
    if name == "edits":
        return parse_edits(_text_edits(text))
    if name == "face_index":
        return parse_face_index(text)
    raise ValueError(f"no command-line form for {name!r}")   # a caller's slip, not a user's


# --------------------------------------------------------------------------------------------- request
@dataclass(frozen=True)
class Request:
    """What to invert and export, checked (use `Request.parse`)."""
    views: tuple[tuple[float, float], ...] = ()
    edits: Mapping[str, float] = field(default_factory=dict)
    box: tuple[float, float, float, float] | None = None
    camera: tuple[float, float] | None = None
    face_index: int | None = None

    @classmethod
    def parse(cls, *, views=None, edits=None, box=None, camera=None, face_index=None,
              domain: str | Domain | None = None, directions: Mapping | None = None, notes: Sequence[str] = (),
              max_views: int | None = None) -> "Request":
        """Every field checked (its JSON form, or what a checker already returned), then together: a box
        excludes a face index, and `domain` (when given) must accept the box and camera. `directions`: the
        loaded edit directions, to resolve the edit names against; `max_views`: a caller's cap on views."""
        req = cls(views=tuple(parse_views(views, max_views)), edits=parse_edits(edits, directions, notes),
                  box=parse_box(box), camera=parse_camera(camera), face_index=parse_face_index(face_index))
        if req.box is not None and req.face_index is not None:
            raise RequestError("box and face index exclude each other: the box is the head, so no faces are "
                               "detected to choose from")
        if domain is not None:
            problem = get_domain(domain).photo_options_error(req.box, req.camera)
            if problem:
                raise RequestError(problem)
        return req

    def align_options(self) -> dict:
        """The box and camera as keyword arguments of `Domain.align` (only those given)."""
        out: dict = {}
        if self.box is not None:
            out["box"] = self.box
        if self.camera is not None:
            out["yaw"], out["pitch"] = self.camera
        return out


__all__ = ["RequestError", "Request", "check_angles", "parse_view", "parse_views", "parse_camera", "parse_box",
           "parse_face_index", "parse_edits", "parse_text", "MAX_FACE_INDEX", "YAW_LIMIT", "PITCH_LIMIT"]
