import io
import sys

from trainkit.progress import progress


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_quiet_when_not_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    bar = progress(range(3), desc="train")
    assert bar.disable
    assert list(bar) == [0, 1, 2]
    bar.set_postfix(loss=1.0)  # works either way


def test_shows_on_a_terminal_unless_quiet(monkeypatch):
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    bar = progress(range(3), desc="train")
    assert not bar.disable
    list(bar)
    bar.close()
    assert "train" in tty.getvalue()
    assert progress(range(3), quiet=True).disable


def test_off_on_other_ranks(monkeypatch):
    monkeypatch.setattr(sys, "stderr", FakeTTY())
    monkeypatch.setenv("RANK", "1")
    assert progress(range(3)).disable
