"""``streamtrain`` itself: every command's parser builds and answers ``--help``; usage errors exit 2.
Run in process through ``run_cli``, which these tests also check: it gives back the environment, torch's
threads and the logging set-up it changes for a call."""

import logging
import os

import pytest
import torch

from streamtrain.cli import COMMANDS
from tests.support.cli import run_cli


def test_help_lists_every_command():
    code, out, _ = run_cli("--help")
    assert code == 0
    assert all(name in out for name in COMMANDS)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_answers_help(command):
    code, out, err = run_cli(command, "--help")
    assert code == 0 and not err
    assert out.startswith(f"usage: streamtrain {command}") and COMMANDS[command][1] in out


@pytest.mark.parametrize("argv, message", [([], "the following arguments are required: COMMAND"),
                                           (["shrink"], "invalid choice: 'shrink'"),
                                           (["inspect"], "the following arguments are required")])
def test_usage_errors_exit_2_with_the_usage(argv, message):
    code, out, err = run_cli(*argv, check=False)
    assert code == 2 and not out
    assert err.startswith("usage: streamtrain") and message in err


def test_run_cli_gives_back_what_it_changes_for_a_call(tmp_path):
    root = logging.getLogger()
    handlers, level, threads = list(root.handlers), root.level, torch.get_num_threads()
    code, _, err = run_cli("inspect", str(tmp_path), env={"STREAMTRAIN_TEST_VARIABLE": "1"}, threads=1, check=False)
    assert code == 2 and "no index.json" in err
    assert "STREAMTRAIN_TEST_VARIABLE" not in os.environ
    assert (root.handlers, root.level, torch.get_num_threads()) == (handlers, level, threads)
    with pytest.raises(AssertionError, match=f"streamtrain inspect {tmp_path} exited 2"):
        run_cli("inspect", str(tmp_path))
