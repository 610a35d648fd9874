"""Progress bars: one finished line into a log file, none when quiet, and nothing on stdout."""

from __future__ import annotations

import pytest

from edgekit.progress import progress, set_quiet


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
