"""Credentials and query tokens never leave the process: not in a printed line, a log line, a file of a
run (names and contents, TensorBoard's included), an output file's name, nor any exception of a chain.

The rule (docs/secrets.md): a location is printed or stored as ``redact(url)``: no user info, no query.
Real servers on 127.0.0.1 that require the credentials, so a run that works has used them.
"""

import json
import logging
import traceback
from pathlib import Path

import pytest

from streamtrain.cli import main
from streamtrain.loader import StreamLoader
from tests.support.corpus import utterances, write_jsonl
from tests.support.errors import the_error_line
from tests.support.faults import fault_server
from tests.support.runs import digit_dataset, micro_recipe
from tests.support.servers import s3_server

pytestmark = pytest.mark.servers

PASSWORD, TOKEN = "pa55word-XYZZY", "t0ken-PLUGH"
SECRETS = (PASSWORD, TOKEN)


def assert_clean(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaks in {where}:\n{text}"


def exception_texts(error: BaseException) -> str:
    """Everything an exception chain can show: the formatted traceback and every link's str and repr,
    suppressed contexts included (``raise ... from None`` keeps them reachable)."""
    texts, seen, todo = ["".join(traceback.format_exception(error))], set(), [error]
    while todo:
        link = todo.pop()
        if link is None or id(link) in seen:
            continue
        seen.add(id(link))
        texts += [str(link), repr(link), repr(link.args)]
        todo += [link.__cause__, link.__context__]
    return "\n".join(texts)


def assert_files_clean(root: Path) -> None:
    for path in root.rglob("*"):
        assert_clean(str(path.relative_to(root)), f"a file name under {root}")
        if path.is_file():
            assert_clean(path.read_bytes().decode("latin-1"), str(path))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(the root served, the URL of its dataset ``ds`` with user, password and token)."""
    root = tmp_path_factory.mktemp("served")
    digit_dataset(root / "ds", 16, seed=4, shard_size=60_000)
    with fault_server(root, auth=("user", PASSWORD), token=TOKEN, lifetime=None) as server:
        yield root, server.url.replace("://", f"://user:{PASSWORD}@") + "/ds?token=" + TOKEN


def test_no_exception_of_a_chain_holds_a_secret(served):
    _, url = served
    missing = url.replace("/ds?", "/missing?")
    with pytest.raises(Exception) as caught:
        StreamLoader(missing, batch_size=2, num_workers=0)
    assert_clean(exception_texts(caught.value), "the exception chain")
    assert str(caught.value).endswith("/missing/index.json: no index.json (is this a packed dataset?)")
    assert str(caught.value).count("index.json") == 2  # said once, not "URL: cannot read: URL: cannot read after"


def test_inspect_prints_no_secret(served, capfd):
    _, url = served
    assert main(["inspect", url]) == 0
    assert main(["inspect", url, "--json"]) == 0
    out, err = capfd.readouterr()
    assert "samples" in out
    assert_clean(out + err, "inspect's output")


def test_a_run_and_its_eval_keep_no_secret(served, tmp_path, capfd, caplog):
    _, url = served
    caplog.set_level(logging.INFO)  # what the command shows on the console
    run_dir = tmp_path / "run"
    recipe = micro_recipe(run_dir, url, url, train={"max_steps": 2, "checkpoint_every": 1},
                          data={"num_workers": 1}, eval={"every": 2, "batch_size": 16})
    assert main(["train", str(recipe)]) == 0
    # resumed with another validation URL (same token, one more query field): "the recipe changed since ..."
    assert main(["train", str(recipe), "train.max_steps=3", f"data.validation={url}&v=2"]) == 0
    assert main(["eval", str(run_dir), url, "--num-workers", "0", "--device", "cpu"]) == 0
    out, err = capfd.readouterr()
    assert "the recipe changed since that checkpoint" in out and "hypotheses:" in out
    assert_clean(out + err + caplog.text, "the printed lines")
    assert list(run_dir.rglob("events.out.tfevents*")) and list(run_dir.rglob("trainer.json"))
    assert list((run_dir / "model").glob("eval-ds.jsonl"))
    assert_files_clean(run_dir)


def test_pack_skip_bad_names_remote_audio_without_secrets(served, tmp_path, capfd):
    root, url = served
    corpus = write_jsonl(root / "src", utterances(3, seed=1))
    base = url.rsplit("/ds?", 1)[0]
    lines = []
    for n, line in enumerate(corpus.source.read_text().splitlines()):
        record = json.loads(line)
        audio = record["audio"] if n else "audio/missing.wav"  # the first item cannot be read
        record["audio"] = f"{base}/src/{audio}?token={TOKEN}"
        lines.append(json.dumps(record) + "\n")
    manifest = tmp_path / "remote.jsonl"
    manifest.write_text("".join(lines))
    out = tmp_path / "packed"
    assert main(["pack", str(manifest), str(out), "--skip-bad", "--no-progress"]) == 0
    printed = "".join(capfd.readouterr())
    assert "rejected 1" in printed and "missing.wav" in (out / "rejects.jsonl").read_text()
    assert_clean(printed, "pack's output")
    assert_files_clean(out)


def test_an_output_url_with_a_query_is_refused_and_nothing_is_written(tmp_path, capfd, monkeypatch):
    import s3fs

    corpus = write_jsonl(tmp_path / "src", utterances(2, seed=2))
    with s3_server() as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
        fs.mkdir("bucket")
        assert main(["pack", str(corpus.source), f"s3://bucket/x?token={TOKEN}", "--no-progress"]) == 2
        error = the_error_line(capfd.readouterr().err)
        assert "query" in error
        assert_clean(error, "pack's error")
        fs.invalidate_cache()
        assert fs.find("bucket") == []
