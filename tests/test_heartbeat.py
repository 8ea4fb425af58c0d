"""The heartbeat file that container probes read for processes without HTTP."""

import os
import time

from core.heartbeat import Heartbeat, main


def test_the_probe_answers_from_the_files_age(tmp_path, capsys):
    path = tmp_path / "alive"
    assert main([str(path), "30"]) == 1
    assert "no heartbeat" in capsys.readouterr().err
    assert main(["--missing-ok", str(path), "300"]) == 0  # disconnected is not stuck
    beat = Heartbeat(path)
    beat.beat()
    assert main([str(path), "30"]) == 0
    old = time.time() - 120
    os.utime(path, (old, old))
    assert main([str(path), "30"]) == 1
    assert "last beat 120 s ago" in capsys.readouterr().err
    assert main(["--missing-ok", str(path), "60"]) == 1  # there, and stale: stuck
    beat.beat()  # within BEAT_EVERY_SECONDS of the last: not written again
    assert main([str(path), "30"]) == 1
    beat.beat(force=True)
    assert main([str(path), "30"]) == 0
    beat.stop()
    assert not path.exists()
    assert main(["only-one-argument"]) == 2


def test_without_a_path_nothing_is_written(tmp_path):
    beat = Heartbeat(None)
    beat.beat(force=True)
    beat.stop()
    assert list(tmp_path.iterdir()) == []
