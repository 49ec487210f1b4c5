"""RunFolder at a URL: its staging folder is made on first use and never left behind."""

import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from streamtrain.train.run_folder import RunFolder

URL = "memory://streamtrain-run-folder-test/run"


def test_a_run_folder_at_a_url_stages_only_what_is_written_and_close_removes_the_staging(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with RunFolder.of(URL) as run:
        assert run.names("checkpoints") == [] and list(tmp_path.iterdir()) == []  # reading names stages nothing
        (run.local / "recipe.yaml").write_text("steps: 3\n")
        run.publish("recipe.yaml")
        staging = run.local
        assert staging.parent == tmp_path
    assert not staging.exists()
    with RunFolder(URL) as again:
        assert again.fetch("recipe.yaml").read_text() == "steps: 3\n"


def test_a_staging_folder_never_closed_stays_while_the_process_runs_and_is_gone_after(tmp_path):
    """A library caller that never closes gets paths that stay valid, and leaks nothing on disk."""
    script = f"""
        import gc, tempfile
        tempfile.tempdir = {str(tmp_path)!r}
        from streamtrain.train.run_folder import RunFolder
        staging = RunFolder.of({URL!r}).local  # the object is collected at once
        gc.collect()
        assert staging.is_dir()
        print(staging)
        """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).parent == tmp_path and list(tmp_path.iterdir()) == []
