import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from trainkit.cli import common_options, prepare_run_dir
from trainkit.errors import UserError, handle_user_errors


@click.command()
@common_options
@click.option("--boom", is_flag=True)
@handle_user_errors
def cmd(config_path, overrides, device, precision, seed, quiet, boom):
    if boom:
        raise RuntimeError("a bug")
    raise UserError("data directory not found", "--data_dir /nope", "expected a folder of *_actions.npy")


def test_user_error_is_one_line_exit_2():
    result = CliRunner().invoke(cmd, [])
    assert result.exit_code == 2
    assert result.output.strip() == "error: data directory not found (--data_dir /nope): expected a folder of *_actions.npy"
    assert "Traceback" not in result.output


def test_bug_keeps_traceback():
    result = CliRunner().invoke(cmd, ["--boom"])
    assert isinstance(result.exception, RuntimeError)


def test_prepare_run_dir_refuses_existing_run(tmp_path):
    run = tmp_path / "run"
    prepare_run_dir(run, resume=None)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "latest.pt").write_bytes(b"keep me")
    with pytest.raises(UserError, match="already holds a run"):
        prepare_run_dir(run, resume=None)
    assert (run / "checkpoints" / "latest.pt").read_bytes() == b"keep me"
    assert prepare_run_dir(run, resume="auto") == run


def test_prepare_run_dir_names_a_run_that_saved_no_checkpoint(tmp_path):
    # A run that crashed in step 1 left config.yaml and metrics.jsonl but no checkpoint: "--resume auto"
    # cannot help, so the error must not send the user there; the files stay untouched.
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("keep: me\n")
    with pytest.raises(UserError, match="saved no checkpoint") as err:
        prepare_run_dir(run, resume=None)
    assert "new --save_dir" in str(err.value)
    assert (run / "config.yaml").read_text() == "keep: me\n"


def test_common_options_are_real_options():
    result = CliRunner().invoke(cmd, ["--precision", "fp64"])
    assert result.exit_code == 2 and "fp64" in result.output


def test_group_turns_click_usage_errors_into_one_line():
    from trainkit.cli import Group

    @click.group(cls=Group)
    def tool():
        pass

    @tool.command()
    @click.option("--n", type=int, required=True)
    def run(n):
        click.echo(f"n={n}")

    runner = CliRunner()
    ok = runner.invoke(tool, ["run", "--n", "3"])
    assert ok.exit_code == 0 and ok.output == "n=3\n"
    for argv, fragment in ((["run", "--n", "x"], "'x' is not a valid integer"), (["run", "--bogus"], "No such option"),
                           (["run"], "Missing option '--n'")):
        result = runner.invoke(tool, argv)
        assert result.exit_code == 2, argv
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.output


def test_set_help_names_no_key_unless_the_package_gives_its_own():
    text = CliRunner().invoke(cmd, ["--help"]).output
    assert "optim.lr" not in text and "section.key=value" in text  # trainkit knows no package's keys

    @click.command()
    @common_options(set_example="train.lr=2e-4")
    def pkg(**kwargs):
        pass

    assert "e.g. --set train.lr=2e-4" in " ".join(CliRunner().invoke(pkg, ["--help"]).output.split())
