"""`served_s` in the pipeline API: the timings up to served, known once `recording` began."""

from __future__ import annotations

from gateway.schemas import served_after


def test_served_is_the_timings_before_recording_once_recording_is_there():
    running = {"queued": 0.2, "cloning": 0.1, "executing": 1.5, "deploying": 0.1}
    assert served_after(running) is None
    assert served_after({**running, "recording": 0.3}) == 1.9
    assert served_after({}) is None
