"""Progress bars: into a log file no '\r', a line per 10% of a long step (at most one per 10 s) and the finished
line; on a terminal a bar redrawn in place with an ETA; none when quiet, and nothing on stdout."""

from __future__ import annotations

import io
import types

import pytest

import edgekit.progress
from edgekit.progress import progress, set_quiet, set_stream


class Clock:
    """A stand-in for edgekit.progress's `time`: `monotonic()` reads `now`, which the test advances."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(edgekit.progress, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


def test_into_a_file_only_the_finished_line_is_written(capsys: pytest.CaptureFixture[str]) -> None:
    assert list(progress(range(5), "calibrating", 5, width=10)) == [0, 1, 2, 3, 4]
    out, err = capsys.readouterr()
    assert out == ""
    assert "\r" not in err and err.count("\n") == 1
    assert err.startswith("calibrating [##########] 5/5 ")


def test_quiet_silences_every_bar(capsys: pytest.CaptureFixture[str]) -> None:
    set_quiet(True)
    try:
        assert sum(progress(range(100), "bench", 100)) == 4950
    finally:
        set_quiet(False)
    assert capsys.readouterr() == ("", "")


def test_json_commands_run_without_progress(capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import edgekit.cli as cli

    def drawing(args: object) -> None:  # a command that draws a bar, as a --json compile would
        list(progress(range(3), "calibrating", 3))
        print("{}")

    monkeypatch.setattr(cli, "cmd_targets_list", drawing)
    assert cli.main(["targets", "list", "--json"]) == 0
    assert capsys.readouterr() == ("{}\n", "")
    assert cli.main(["targets", "list"]) == 0
    assert "calibrating" in capsys.readouterr().err
    assert cli.main(["targets", "list", "--json"]) == 0
    list(progress(range(3), "after", 3))  # main leaves in-process callers their bars
    assert "after" in capsys.readouterr().err


def test_a_long_step_into_a_file_logs_a_tenth_at_most_every_10_s(clock: Clock,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    for _ in progress(range(100), "calibrating", 100, width=10):
        clock.now += 0.5  # 50 s in all: 10% after 5 s is too soon; 20%, 40%, 60%, 80% are 10 s apart
    assert capsys.readouterr() == ("", "calibrating [##        ] 20/100 10.0s ETA 40.0s\n"
                                       "calibrating [####      ] 40/100 20.0s ETA 30.0s\n"
                                       "calibrating [######    ] 60/100 30.0s ETA 20.0s\n"
                                       "calibrating [########  ] 80/100 40.0s ETA 10.0s\n"
                                       "calibrating [##########] 100/100 50.0s\n")


def test_a_step_shorter_than_10_s_logs_only_its_finished_line(clock: Clock,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    for _ in progress(range(100), "bench", 100, width=10):
        clock.now += 0.09
    assert capsys.readouterr().err == "bench [##########] 100/100 9.0s\n"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_bar_redraws_in_place_with_an_eta(clock: Clock,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    terminal = Terminal()
    set_stream(terminal)
    try:
        for _ in progress(range(4), "bench", 4, width=4):
            clock.now += 1.0
    finally:
        set_stream(None)
    assert terminal.getvalue() == ("\rbench [#   ] 1/4 1.0s ETA 3.0s\x1b[K\rbench [##  ] 2/4 2.0s ETA 2.0s\x1b[K"
                                   "\rbench [### ] 3/4 3.0s ETA 1.0s\x1b[K\rbench [####] 4/4 4.0s\x1b[K\n")
    assert capsys.readouterr() == ("", "")  # set_stream took the bar off sys.stderr
