"""Issue 22, item 15: smaller defects, each against the real part."""

import subprocess
import sys

import botocore.exceptions

from streamtrain.cli import main
from streamtrain.features import build_featurizer
from streamtrain.features.feature_cache import write_feature_column
from streamtrain.storage.remote import is_transient
from tests.support.corpus import utterances, write_jsonl, write_kaldi
from tests.support.datasets import write_dataset
from tests.support.errors import the_error_line


def test_missing_credentials_are_not_retried_as_transient():
    assert not is_transient(botocore.exceptions.NoCredentialsError())
    assert not is_transient(botocore.exceptions.PartialCredentialsError(provider="env", cred_var="secret"))
    assert is_transient(botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"))


def test_pack_skip_bad_with_every_item_rejected_is_an_error(tmp_path, capsys):
    corpus = write_jsonl(tmp_path / "src", utterances(2, seed=3))
    for audio in (tmp_path / "src" / "audio").iterdir():
        audio.unlink()
    out = tmp_path / "out"
    assert main(["pack", str(corpus.source), str(out), "--skip-bad", "--no-progress"]) == 2
    error = the_error_line(capsys.readouterr().err)
    assert "all 2 items were rejected" in error and "rejects.jsonl" in error
    assert len((out / "rejects.jsonl").read_text().splitlines()) == 2
    assert not (out / "index.json").exists()


def test_a_failing_kaldi_pipe_is_blamed_on_its_wav_scp_line(tmp_path, capsys):
    corpus = write_kaldi(tmp_path / "kaldi", utterances(3, seed=4))
    (corpus.source / "wav.scp").write_text("rec0000 false |\n")
    assert main(["pack", str(corpus.source), str(tmp_path / "out"), "--kaldi-pipes", "--no-progress"]) == 2
    error = the_error_line(capsys.readouterr().err)
    assert "wav.scp line 1" in error and "text line" not in error and "false |" in error


def test_inspect_verify_checks_a_column_as_a_column(tmp_path, capsys):
    write_dataset(tmp_path / "ds", [2, 3])
    column = tmp_path / "features"
    write_feature_column(str(tmp_path / "ds"), column, build_featurizer("whisper_log_mel", n_mels=40, chunk_seconds=4),
                         "whisper_log_mel", progress=False)
    assert main(["inspect", str(column), "--verify"]) == 0
    assert "verified 2 shards: OK" in capsys.readouterr().out


def test_library_info_lines_do_not_reach_the_console_of_train():
    script = ("import logging; from streamtrain.cli.train import configure_logging; configure_logging(); "
              "logging.getLogger('aiobotocore.credentials').info('Found credentials in environment variables.'); "
              "logging.getLogger('streamtrain.train').info('a line of ours')")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "a line of ours" in result.stderr and "Found credentials" not in result.stderr
