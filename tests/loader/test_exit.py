"""A process that uses StreamLoader ends when its script ends, whatever state its iterator is in.

About processes (DataLoader workers, interpreter exit), so each case runs a real script in a subprocess."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.support.datasets import write_dataset

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_script(source: str, timeout: float) -> subprocess.CompletedProcess:
    """Run ``source`` in its own session; if it has not exited after ``timeout`` s, kill the whole
    session (workers included) and fail."""
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(source)], env=ENV, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"the script did not exit within {timeout} s; it printed:\n{out}\n{err}")
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_a_script_that_keeps_a_partly_used_iterator_exits(tmp_path):
    """At exit, multiprocessing terminates its daemonic children with SIGTERM and joins them; the
    workers ignore SIGTERM (preemption is the main process's to handle), so the loader must stop
    them first."""
    write_dataset(tmp_path / "data", [8, 8, 8, 8])
    result = run_script(f"""
        from streamtrain.loader import StreamLoader
        loader = StreamLoader({str(tmp_path / "data")!r}, batch_size=2, num_workers=2, seed=0)
        it = iter(loader); batch = next(it)
        print("done", flush=True)
        """, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "done\n"
