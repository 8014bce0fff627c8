"""``chat.server.collector``: a serving process freezes what start-up made and collects
garbage far less often (in a process of its own: the test runner keeps its defaults)."""

from __future__ import annotations

import subprocess
import sys

from chat.server import collector


def test_settling_freezes_start_up_and_raises_the_thresholds() -> None:
    script = (
        "import gc\n"
        "from chat.server.collector import settle_after_start\n"
        "before = gc.get_threshold()\n"
        "settle_after_start()\n"
        "print(before, gc.get_threshold(), gc.get_freeze_count() > 1000)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True, timeout=60
    ).stdout.split(")")
    before, after, frozen = out[0] + ")", out[1].strip() + ")", out[2].strip()
    assert before == "(700, 10, 10)"
    assert after == str((collector.YOUNG, collector.OLDER, collector.OLDEST))
    assert frozen == "True"
