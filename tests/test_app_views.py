"""The view events (slider previews, full renders, the settling after a new result) run in a queue of their own
beside the model steps (issue #28.3). Their wiring in the page, and what the service does when a new result, a new
photo or the session's end overtakes a view while it runs, driven directly on the small random model: the
overtaking step runs in the middle of the view's model call (no threads, no timing)."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from appserver import build_apps, import_app
from goae.app.state import Session
from goae.app.ui import MODEL_QUEUE, VIEW_QUEUE


def no_progress(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def goae_app(examples_dir: Path):
    return build_apps(directions=str(examples_dir / "goae" / "ws_edit"), examples=str(examples_dir / "wild")).default


@pytest.fixture
def session(goae_app, examples_dir) -> Session:
    """A fresh session with obama.jpg aligned and inverted."""
    s = goae_app.align(examples_dir / "wild" / "obama.jpg", None).session
    goae_app.invert(s, 0, 0, 64, progress=no_progress)
    yield s
    goae_app.end_session(s)


def _strengths(goae_app, **given) -> list[float]:
    return [given.get(name, 0.0) for name in goae_app.directions]


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """The same picture (a render from the cached tri-planes may differ from the step's own by rounding)."""
    return a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).max() <= 2


def _during(monkeypatch, obj, name: str, step):
    """Run `step()` in the middle of the next call of obj.name (after the call started, before it returns)."""
    real = getattr(obj, name)

    def wrapped(*args, **kwargs):
        monkeypatch.setattr(obj, name, real)
        step()
        return real(*args, **kwargs)
    monkeypatch.setattr(obj, name, wrapped)


# ------------------------------------------------------------------------------------------ the page's wiring
@pytest.fixture(scope="module")
def app_module(examples_dir):
    return import_app({"GOAE_WEIGHTS": "random-small", "GOAE_DIRECTIONS": str(examples_dir / "goae" / "ws_edit"),
                       "GOAE_EXAMPLES": str(examples_dir / "wild")})


@pytest.fixture(scope="module")
def demo(app_module):
    return app_module.demo


def test_view_events_have_their_own_queue_and_never_write_the_session(demo):
    fns = list(demo.fns.values())
    by_name = {fn.api_name: fn for fn in fns}
    view_events = [by_name["preview"], by_name["render"], *(fn for fn in fns if fn.api_name.startswith("settle_"))]
    assert len(view_events) >= 7   # preview, render and a settling after each step that shows a new result
    for fn in view_events:
        assert (fn.concurrency_id, fn.concurrency_limit) == (VIEW_QUEUE, 1), fn.api_name
        assert not any(isinstance(block, gr.State) for block in fn.outputs), fn.api_name
    for name in ("reconstruct", "edit_session", "video", "mesh", "invert", "render_view", "edit"):
        assert (by_name[name].concurrency_id, by_name[name].concurrency_limit) == (MODEL_QUEUE, 1), name
    # Every step that shows a new result (and its view) is followed, on success, by its settling.
    view = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "view")
    settles = {fn.trigger_after for fn in view_events[2:] if fn.trigger_only_on_success}
    results = [fn for fn in fns if fn.fn.__name__ in ("reconstruct", "reconstruct_if_aligned", "edit_session")]
    assert len(results) == 7 and all(view in fn.outputs for fn in results)
    for fn in results:
        assert fn._id in settles, f"{fn.api_name} shows a new result but is not settled after"
    # A photo that changes again while its first inversion runs: its own inversion follows, it is not dropped.
    assert all(fn.trigger_mode == "always_last" for fn in results if fn.fn.__name__ == "reconstruct_if_aligned")


# ------------------------------------------------------------------------------------------ overtaken views
def test_a_view_that_a_new_inversion_overtakes_shows_nothing(goae_app, session, examples_dir, monkeypatch):
    """A preview and a full render started on one inversion; a new inversion of the same session (another
    photo's face, the real inversion path; its cache key is the same file name) lands while they render."""
    def new_inversion():
        goae_app.align(examples_dir / "wild" / "astronaut.png", session, 0)
        goae_app.invert(session, 10, 0, 64, progress=no_progress)
    key = session.current
    _during(monkeypatch, goae_app.model, "preview", new_inversion)
    assert goae_app.preview(session, 25, 0).image is None
    assert session.current == key and session.shown == (key, 10, 0)
    _during(monkeypatch, goae_app.model, "view", new_inversion)
    assert goae_app.view(session, 25, 0, 64).view is None
    # Nothing overtakes it: shown.
    assert goae_app.view(session, 25, 0, 64).view.image.shape == (512, 512, 3)
    assert session.shown == (key, 25, 0)


def test_a_view_that_an_edit_overtakes_leaves_the_edit_s_files(goae_app, session, monkeypatch):
    """The edit writes its view into the session's folder; the view overtaken by it writes under views/ and
    shows nothing: the edit's files are its own."""
    edited = {}
    _during(monkeypatch, goae_app.model, "view", lambda: edited.update(
        out=goae_app.edit(session, 0, 0, 64, *_strengths(goae_app, age=2.0), progress=no_progress)))
    assert goae_app.view(session, 40, 0, 64).view is None
    out = edited["out"]
    assert session.current != session.inversion and session.shown == (session.current, 0, 0)
    assert Path(out.view.path).parent == session.folder
    with Image.open(out.view.path) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), out.view.image)
    assert (session.folder / "views" / "view.png").is_file()   # the overtaken view's own file


def test_a_view_of_an_ended_session_shows_and_keeps_nothing(goae_app, session, examples_dir, monkeypatch):
    folder = session.folder
    # The tab closes (the unload event ends the folder, not knowing the Session) while a full render runs.
    _during(monkeypatch, goae_app.model, "view", lambda: goae_app.end_folder(folder))
    assert goae_app.view(session, 30, 0, 64).view is None
    assert session.ended and not folder.exists()
    assert goae_app.preview(session, 31, 0).image is None and goae_app.view(session, 31, 0, 64).view is None
    assert not folder.exists()


def test_a_view_when_a_new_photo_replaces_the_session(goae_app, session, examples_dir, monkeypatch):
    """A new photo starts a new Session in the same folder; the old one's view shows and writes nothing there."""
    new = {}
    _during(monkeypatch, goae_app.model, "view", lambda: new.update(
        aligned=goae_app.align(examples_dir / "wild" / "astronaut.png", session)))
    assert goae_app.view(session, 30, 0, 64).view is None
    fresh = new["aligned"].session
    assert session.ended and not fresh.ended and fresh.folder == session.folder
    assert (fresh.folder / "aligned.png").is_file() and not (fresh.folder / "views").exists()
    goae_app.end_session(fresh)


def test_ending_a_replaced_session_leaves_the_new_one(goae_app, examples_dir):
    """A new photo's Session takes the folder of the tab's previous one; the previous one ending late (its photo
    failing, its state expiring) does not end the new one. The tab closing ends whichever uses the folder."""
    old = goae_app.align(examples_dir / "wild" / "obama.jpg", None, session_id="one tab").session
    new = goae_app.align(examples_dir / "wild" / "astronaut.png", old).session
    assert old.ended and not new.ended and new.folder == old.folder
    goae_app.end_session(old)
    assert not new.ended
    goae_app.end_folder(new.folder)
    assert new.ended and not new.folder.exists()


def test_an_inversion_of_an_ended_session_keeps_nothing(goae_app, examples_dir, monkeypatch):
    """A new photo while the previous one is being inverted: that inversion's result is not kept (nor shown:
    None, the page skips its outputs), so the new photo's session is not overwritten by the old one."""
    old = goae_app.align(examples_dir / "wild" / "obama.jpg", None).session
    new = {}
    _during(monkeypatch, goae_app.model, "invert", lambda: new.update(
        aligned=goae_app.align(examples_dir / "wild" / "astronaut.png", old)))
    assert goae_app.invert(old, 0, 0, 64, progress=no_progress) is None
    assert old.ended and old.current is None
    with pytest.raises(Exception, match="no longer kept"):
        goae_app.cache.get(str(old.cache_keys[0]))
    goae_app.end_session(new["aligned"].session)


# ------------------------------------------------------------------------------------------ settling
def test_settling_after_a_new_result(goae_app, session, monkeypatch):
    """After a new result, the view queue settles the view: nothing to do when no view was shown since the last
    settling and the sliders are where the result was rendered; a full render of the new result when a view
    was shown meanwhile (its output may reach the page after the result's) or the sliders moved."""
    assert goae_app.settle(session, 0, 0, 64).view is None          # the inversion's own view stands
    # A preview shown while an edit is being made: the edit's view is rendered again at the sliders' position.
    _during(monkeypatch, goae_app.model, "edit", lambda: goae_app.preview(session, 20, 0))
    edited = goae_app.edit(session, 0, 0, 64, *_strengths(goae_app, age=2.0), progress=no_progress)
    assert session.views == 1
    again = goae_app.settle(session, 0, 0, 64).view
    assert again is not None and _same(again.image, edited.view.image)
    assert Path(again.path).parent == session.folder / "views"
    assert goae_app.settle(session, 0, 0, 64).view is None          # settled
    # The sliders moved while the result was made: its render at their position.
    turned = goae_app.settle(session, 30, 0, 64).view
    assert turned is not None and session.shown == (session.current, 30, 0)
    assert not _same(turned.image, edited.view.image)


def test_the_page_skips_what_is_overtaken(demo):
    """The page's callbacks: an overtaken view or settling changes nothing on the page (gr.skip for each
    output); before any inversion a full render clears the view."""
    by_name = {fn.api_name: fn for fn in demo.fns.values()}
    render, settle = by_name["render"].fn, by_name["settle_after_reconstruct"].fn
    empty = Session(folder=Path("/nonexistent"))
    cleared = render(empty, 10, 0, 64)
    assert cleared[0] is None and cleared[-1] == ""
    ended = Session(folder=Path("/nonexistent"), current="gone", ended=True)
    for out in (render(ended, 10, 0, 64), settle(ended, 10, 0, 64)):
        assert len(out) == 6 and all(isinstance(v, type(gr.skip())) for v in out)


def test_a_replaced_session_written_back_into_the_page_heals(app_module, examples_dir):
    """A step of the previous photo that finished around a new photo's alignment may still write its (ended)
    Session into the page's state: the page's next step uses the new photo's Session of the same folder, and
    ending the old one again leaves the new one's files."""
    app = app_module.goae_app
    render = {fn.api_name: fn for fn in app_module.demo.fns.values()}["render"].fn
    old = app.align(examples_dir / "wild" / "obama.jpg", None, session_id="a tab").session
    new = app.align(examples_dir / "wild" / "astronaut.png", old).session
    app.invert(new, 0, 0, 64, progress=no_progress)
    assert app.live(old) is new and app.live(new) is new
    shown = render(old, 20, 0, 64)               # the state still holds `old`: the new photo's view is shown
    assert isinstance(shown[0], np.ndarray) and new.shown == (new.current, 20, 0)
    app.end_session(old)                          # e.g. its state expiring: already ended, nothing more goes
    assert not new.ended and (new.folder / "aligned.png").is_file() and app.cache.get(new.current)
    app.end_folder(new.folder)                   # the tab closes
    assert app.live(old) is old and app.live(new) is new and new.ended
