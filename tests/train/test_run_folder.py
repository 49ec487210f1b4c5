"""RunFolder at a URL: its staging folder is made on first use and never left behind."""

import gc
import tempfile

from streamtrain.train.run_folder import RunFolder


def test_a_run_folder_at_a_url_stages_only_what_is_written_and_leaves_no_staging_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    url = "memory://streamtrain-run-folder-test/run"
    run = RunFolder.of(url)
    assert run.names("checkpoints") == [] and list(tmp_path.iterdir()) == []  # reading names stages nothing
    (run.local / "recipe.yaml").write_text("steps: 3\n")
    run.publish("recipe.yaml")
    staging = run.local
    assert staging.parent == tmp_path
    del run
    gc.collect()
    assert not staging.exists()  # a library caller that never closes leaks nothing
    with RunFolder(url) as again:
        assert again.fetch("recipe.yaml").read_text() == "steps: 3\n"
        staging = again.local
    assert not staging.exists()
