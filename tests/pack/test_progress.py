"""Progress reports: plain lines when the output is not a terminal, a bar when it is."""

import io
import re

from streamtrain.pack.progress import ProgressReport, on_terminal
from tests.support.cli import run_cli
from tests.support.corpus import utterances, write_corpus


def test_plain_lines_come_every_n_units_and_at_the_end_without_carriage_returns():
    out = io.StringIO()
    with ProgressReport("job", 25, "samples", every=10, bar=False, stream=out) as report:
        for _ in range(25):
            report.show(hours="0.100")
            report.update()
    lines = out.getvalue().splitlines()
    assert [line.split(" samples")[0] for line in lines] == ["job: 10/25", "job: 20/25", "job: 25/25"]
    assert "(40%) hours=0.100 |" in lines[0] and "samples/s, eta 0:00:" in lines[0]
    assert "eta" not in lines[-1] and "\r" not in out.getvalue()


def test_updates_of_several_units_write_one_line_per_multiple_passed_and_close_writes_the_rest():
    out = io.StringIO()
    report = ProgressReport("label", 100, "samples", bar=False, stream=out)  # every: a tenth of the total
    for n in (4, 4, 30, 3, 2):
        report.update(n)
    report.close()
    report.close()
    assert [line.split(" samples")[0] for line in out.getvalue().splitlines()] == \
        ["label: 38/100", "label: 41/100", "label: 43/100"]


def test_a_bar_draws_frames_and_a_disabled_report_writes_nothing():
    out = io.StringIO()
    with ProgressReport("job", 5, "steps", bar=True, stream=out) as report:
        for _ in range(5):
            report.update()
    assert "\r" in out.getvalue()  # what a log must never get
    silent = io.StringIO()
    with ProgressReport("job", 5, "steps", enabled=False, stream=silent) as report:
        report.update(5)
    assert silent.getvalue() == ""


def test_pack_without_a_terminal_writes_plain_lines(tmp_path):
    assert not on_terminal()  # pytest captures both streams
    corpus = write_corpus("jsonl", tmp_path / "src", utterances(12, seed=3))
    out, err = run_cli("pack", str(corpus.source), str(tmp_path / "out"), "--workers", "1")[1:]
    lines = [line for line in out.splitlines() if line.startswith("pack: ")]
    assert len(lines) == 12 and re.match(r"pack: 12/12 samples \(100%\) hours=0\.\d{3} \| ", lines[-1]), out
    assert "\r" not in out + err
