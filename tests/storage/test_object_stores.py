"""Object stores end to end, against moto's S3 server on 127.0.0.1: pack to s3:// (killed, then rerun),
--part and --merge with a manifest and its audio at a URL, inspect --verify, train, eval and audit from
s3://, label to s3:// (killed, then resumed), and the error for a location that is not one."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import s3fs

from streamtrain.cli import main
from streamtrain.loader import StreamLoader
from streamtrain.format.dataset import open_dataset
from streamtrain.distill.label import label_dataset
from streamtrain.features import build_featurizer
from streamtrain.features.feature_cache import FeatureCacheError, write_feature_column
from streamtrain.format.sidecar import FEATURES_COLUMN
from streamtrain.pack import PackError, SourceError, merge, pack
from streamtrain.storage.location import LocationError, check_location
from streamtrain.storage.output import Output
from tests.support.cli import run_cli
from tests.support.corpus import utterances, write_corpus
from tests.support.runs import random_whisper
from tests.support.servers import s3_server

REPO = Path(__file__).resolve().parents[2]
KILLER = Path(__file__).with_name("kill_after_publish.py")
BUCKET = "corpus"
SHARD_SIZE = 200_000  # 16 utterances (0.7 MB) -> 4 or 5 shards


def s3fs_of(endpoint):
    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)


def storage_options(endpoint):
    return {"client_kwargs": {"endpoint_url": endpoint}}


@pytest.fixture(scope="module")
def s3():
    with s3_server() as endpoint:
        s3fs_of(endpoint).mkdir(BUCKET)
        yield endpoint


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus("jsonl", tmp_path_factory.mktemp("corpus") / "src", utterances(16, seed=4))


@pytest.fixture(scope="module")
def dataset(s3, corpus):
    """The corpus packed to s3:// in process, with the endpoint in storage_options."""
    url = f"s3://{BUCKET}/train"
    pack(corpus.source, url, shard_size=SHARD_SIZE, progress=False, storage_options=storage_options(s3))
    return url


def cli(*args, endpoint):
    """``streamtrain ARGS`` in process; ``endpoint`` is passed the way a user would, in AWS_ENDPOINT_URL."""
    s3fs.S3FileSystem.clear_instance_cache()  # an instance made before would not read the variable
    return run_cli(*args, env={"AWS_ENDPOINT_URL": endpoint})


def killed(*args, endpoint, kill_after):
    """``streamtrain ARGS`` in a process that SIGKILLs itself after ``kill_after`` files are published."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "AWS_ENDPOINT_URL": endpoint}
    return subprocess.run([sys.executable, str(KILLER), str(kill_after), "--", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def names(endpoint, prefix):
    fs = s3fs_of(endpoint)
    return sorted(path.rsplit("/", 1)[-1] for path in fs.ls(f"{BUCKET}/{prefix}", detail=False)) \
        if fs.exists(f"{BUCKET}/{prefix}") else []


class IndexWatcher(threading.Thread):
    """Polls the bucket while a writer runs: whenever an index.json is there, every file it lists must be
    there with the size it lists."""

    def __init__(self, endpoint, prefix):
        super().__init__(daemon=True)
        self.fs, self.root = s3fs_of(endpoint), f"{BUCKET}/{prefix}"
        self.seen_index, self.problems, self.done = 0, [], threading.Event()

    def run(self):
        while not self.done.is_set():
            self.fs.invalidate_cache()
            try:
                index = json.loads(self.fs.cat_file(f"{self.root}/index.json"))
            except FileNotFoundError:
                continue
            self.seen_index += 1
            listed = dict(zip(index["shards"]["name"], index["shards"]["bytes"]))
            listed.update({column["file"]: column["bytes"] for column in index["columns"].values()})
            sizes = {info["name"].rsplit("/", 1)[-1]: info["size"] for info in self.fs.ls(self.root, detail=True)}
            self.problems += [name for name, size in listed.items() if sizes.get(name) != size]

    def stop(self):
        self.done.set()
        self.join()


@pytest.mark.servers
def test_pack_to_s3_killed_after_an_upload_then_rerun_completes_and_verifies(s3, corpus):
    url = f"s3://{BUCKET}/killed"
    args = ["pack", str(corpus.source), url, "--shard-size", str(SHARD_SIZE), "--no-progress"]
    result = killed(*args, endpoint=s3, kill_after=1)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert names(s3, "killed") == ["shard-000000.tar"]  # uploaded whole; no index lists it

    with pytest.raises(PackError, match=f"output folder {url} is not empty .*pass overwrite"):  # as locally
        pack(corpus.source, url, shard_size=SHARD_SIZE, progress=False, storage_options=storage_options(s3))

    watcher = IndexWatcher(s3, "killed")
    watcher.start()
    rerun = cli(*args, "--overwrite", endpoint=s3)
    watcher.stop()
    assert "packed 16 samples" in rerun.out and f"-> {url}/index.json" in rerun.out
    assert watcher.seen_index and not watcher.problems
    verified = cli("inspect", "--verify", url, endpoint=s3)
    assert re.search(r"verified \d+ shards: OK", verified.out)
    assert list(open_dataset(url, storage_options(s3)).keys.range(0, 16)) == sorted(corpus.texts)


@pytest.mark.servers
def test_pack_to_s3_holds_one_shard_on_local_disk_at_a_time_and_leaves_none(s3, corpus, monkeypatch):
    staged_beside, staging_folders = {}, set()
    real_publish = Output.publish

    def publish(self, name):
        folder = self.stage(name).parent
        staging_folders.add(folder)
        staged_beside[name] = sorted(path.name for path in folder.iterdir())
        real_publish(self, name)
        assert not self.stage(name).exists()

    monkeypatch.setattr(Output, "publish", publish)
    summary = pack(corpus.source, f"s3://{BUCKET}/bounded", shard_size=SHARD_SIZE, progress=False,
                   storage_options=storage_options(s3))
    shards = [name for name in staged_beside if name.endswith(".tar")]
    assert len(shards) == summary.shards and all(staged_beside[name] == [name] for name in shards)
    assert list(staged_beside)[-1] == "index.json"
    assert not any(folder.exists() for folder in staging_folders)


@pytest.mark.servers
def test_an_upload_that_fails_is_an_error_naming_the_file(s3, corpus):
    with pytest.raises(PackError, match=r"s3://no-such-bucket/ds/shard-000000\.tar: cannot upload: "
                                        "The specified bucket does not exist"):
        pack(corpus.source, "s3://no-such-bucket/ds", progress=False, storage_options=storage_options(s3))


@pytest.mark.servers
def test_a_manifest_and_audio_at_a_url_pack_in_parts_to_s3_and_merge(s3, corpus):
    fs = s3fs_of(s3)
    fs.put(str(corpus.source.parent), f"{BUCKET}/source", recursive=True)  # manifest.jsonl + audio/*.wav
    options = storage_options(s3)
    url = f"s3://{BUCKET}/parts"
    for part in range(2):  # part 1 reads its audio from s3 in forked worker processes
        pack(f"s3://{BUCKET}/source/manifest.jsonl", url, part=(part, 2), shard_size=SHARD_SIZE, workers=1 + part,
             progress=False, storage_options=options)
    merged = merge(url, storage_options=options)
    stored = names(s3, "parts")
    assert not [name for name in stored if "part" in name.replace("shard-p", "")]  # part indexes removed
    assert {"index.json", "index.durations.f32", "index.keys.txt"} <= set(stored)
    assert set(merged.shards.names) <= set(stored) and merged.samples == 16
    opened = open_dataset(url, options)
    assert sorted(opened.keys.range(0, 16)) == sorted(corpus.texts)
    loader = StreamLoader(url, batch_size=4, epochs=1, num_workers=0, storage_options=options)
    assert {key: text for batch in loader for key, text in zip(batch.keys, batch.text)} == corpus.texts
    assert "OK" in cli("inspect", "--verify", url, endpoint=s3).out


@pytest.mark.servers
def test_a_manifest_at_a_url_takes_audio_urls_and_rejects_audio_it_cannot_read(s3, corpus, tmp_path):
    fs = s3fs_of(s3)
    first = sorted(corpus.audio)[0]
    fs.put_file(str(corpus.audio[first]), f"{BUCKET}/loose/{first}.wav")
    lines = [{"id": "by-url", "audio": f"s3://{BUCKET}/loose/{first}.wav", "text": corpus.texts[first]},
             {"id": "missing", "audio": "clips/missing.wav", "text": "one two"}]
    fs.pipe_file(f"{BUCKET}/loose/manifest.jsonl", "".join(json.dumps(line) + "\n" for line in lines).encode())
    options = storage_options(s3)
    summary = pack(f"s3://{BUCKET}/loose/manifest.jsonl", tmp_path / "ds", skip_bad=True, progress=False,
                   storage_options=options)
    assert (summary.samples, summary.rejected) == (1, 1)
    reject = json.loads((tmp_path / "ds" / "rejects.jsonl").read_text())
    assert reject["key"] == "missing" and f"s3://{BUCKET}/loose/clips/missing.wav" in reject["reason"]
    assert reject["origin"] == f"s3://{BUCKET}/loose/manifest.jsonl line 2"
    with pytest.raises(SourceError, match="only a JSONL or CSV manifest can be read from a URL"):
        pack(f"s3://{BUCKET}/loose", tmp_path / "folder", source_form="folder", storage_options=options)


@pytest.mark.servers
def test_train_tiny_from_s3_then_eval_and_audit(s3, dataset, tmp_path, monkeypatch):
    run = tmp_path / "run"
    options = f"data.storage_options={{client_kwargs: {{endpoint_url: {s3}}}}}"  # the endpoint from the recipe only
    monkeypatch.chdir(REPO)  # the tiny recipe's tokenizer is a path in the repository
    run_cli("train", "tiny", f"data.train={dataset}", "data.validation=null", "data.batch_size=4", options,
            "eval.every=0", "--output-dir", str(run), "--max-steps", "2", "--checkpoint-every", "2")
    # the datasets and their storage options from the run's recipe.yaml
    assert "audit: OK" in run_cli("audit", str(run)).out
    out = tmp_path / "hypotheses.jsonl"
    evaluated = cli("eval", str(run), dataset, "--out", str(out), "--num-workers", "0", "--device", "cpu",
                    "--max-samples", "4", "--batch-size", "4", endpoint=s3)
    assert "WER" in evaluated.out and len(out.read_text().splitlines()) == 4


@pytest.mark.servers
def test_label_to_s3_killed_after_a_shard_resumes_without_relabelling_it(s3, dataset, tmp_path):
    teacher = random_whisper(tmp_path / "teacher")
    labels = f"s3://{BUCKET}/labels"
    args = ["label", dataset, "--teacher", str(teacher), "--out", labels, "--batch-size", "8", "--no-progress"]
    result = killed(*args, endpoint=s3, kill_after=1)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert names(s3, "labels") == ["label-run.json", "shard-000000.tar"]
    first = s3fs_of(s3).info(f"{BUCKET}/labels/shard-000000.tar")["LastModified"]
    options = storage_options(s3)
    resumed = label_dataset(dataset, str(teacher), labels, batch_size=8, progress=False, storage_options=options)
    assert resumed.shards_skipped == 1 and resumed.shards_written == len(open_dataset(dataset, options).index.shards) - 1
    assert s3fs_of(s3).info(f"{BUCKET}/labels/shard-000000.tar")["LastModified"] == first
    loader = StreamLoader(dataset, batch_size=16, epochs=1, num_workers=0, storage_options=options, columns=[labels])
    keys = [key for batch in loader for key in batch.keys]
    assert len(keys) == len(set(keys)) == 16


@pytest.mark.servers
def test_featurize_to_s3_is_joined_by_the_loader_and_stats_reads_the_dataset(s3, dataset, tmp_path):
    options = storage_options(s3)
    column = f"s3://{BUCKET}/features"
    s3fs_of(s3).pipe_file(f"{BUCKET}/features/stale.tar", b"from an earlier run")
    featurizer = build_featurizer("whisper_log_mel", n_mels=40, chunk_seconds=4)
    with pytest.raises(FeatureCacheError, match=f"{column}: not empty"):
        write_feature_column(dataset, column, featurizer, "whisper_log_mel", storage_options=options)
    index = write_feature_column(dataset, column, featurizer, "whisper_log_mel", batch_size=8, overwrite=True,
                                 progress=False, storage_options=options)
    assert names(s3, "features") == sorted([*index.shards.names, "index.json", "index.durations.f32",
                                            "index.keys.txt"])
    loader = StreamLoader(dataset, batch_size=8, epochs=1, num_workers=0, storage_options=options, columns=[column])
    frames = [sample["json"]["frames"] for batch in loader for sample in batch.columns[FEATURES_COLUMN]]
    assert len(frames) == 16 and min(frames) > 0
    stats = cli("stats", dataset, "--out", str(tmp_path / "cmvn.json"), "--num-workers", "0", "--max-samples", "8",
                endpoint=s3)
    assert "statistics of" in stats.out


@pytest.mark.parametrize("location", ["s3:/corpus/ds", "s3:corpus/ds", "s4://corpus/ds", "gz://corpus/ds"])
def test_a_location_that_is_neither_a_path_nor_a_known_url_is_an_error_naming_it(location, corpus, tmp_path,
                                                                                 monkeypatch, capsys):
    with pytest.raises(LocationError, match=location.split(":")[0]):
        check_location(location)
    monkeypatch.chdir(tmp_path)
    assert main(["pack", str(corpus.source), location, "--no-progress"]) == 2
    assert main(["inspect", location]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and all(location in line for line in errors)
    assert list(tmp_path.iterdir()) == []  # no folder named after it


def test_local_paths_and_known_urls_pass_the_location_check():
    for location in ["data/ds", "./s3:x", "/abs/ds", "C:\\data", "file:///tmp/ds", "s3://b/ds", "https://h/ds",
                     "gs://b/ds"]:
        assert check_location(location) == location
