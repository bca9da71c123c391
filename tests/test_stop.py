"""A worker told to stop (steerlab.search.stop): where the signal lands, and a second one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from steerlab.search.stop import Stopped, held, on_signals


def test_a_signal_raises_where_the_worker_is_except_inside_held():
    log = []
    with pytest.raises(Stopped) as stop, on_signals():
        with held():
            os.kill(os.getpid(), signal.SIGTERM)
            log.append("asked and tagged")  # the stop waited for the block
        log.append("never reached")
    assert log == ["asked and tagged"]
    assert stop.value.code == 143 and str(stop.value) == "stopped by SIGTERM"
    with pytest.raises(Stopped) as stop, on_signals():
        os.kill(os.getpid(), signal.SIGINT)
    assert stop.value.code == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_a_second_signal_exits_at_once():
    code = textwrap.dedent("""
        import os, signal, time
        from steerlab.search.stop import Stopped, on_signals
        with on_signals():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
            except Stopped:
                os.kill(os.getpid(), signal.SIGINT)  # while cleaning up
                time.sleep(30)
        """)  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], timeout=20)
    assert r.returncode == 130
