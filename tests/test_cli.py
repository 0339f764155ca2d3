"""The `keras-gpt` command as a person meets it: fast help, one-line errors, a quiet stderr.

Each test starts `python -m keras_gpt.cli` (what the console script runs) in a
fresh process on this pass's backend, from an empty working directory.
"""

import dataclasses
import re

import keras
import pytest
from helpers import run_python

BACKEND = keras.backend.backend()
# What TensorFlow's C++ runtime prints before its logging is set up.
NATIVE_LOG = re.compile(r"^(WARNING: All log messages before absl|[IW]\d{4} [\d:.]+\s+\d+ )")


def keras_gpt_command(args, cwd, check=False):
    return run_python(["-m", "keras_gpt.cli", *args], backend=BACKEND, cwd=cwd, check=check)


@pytest.mark.parametrize(
    "args, expected_code",
    [
        (["--help"], 0),
        (["pretrain", "--help"], 0),
        (["finetune", "--help"], 0),
        (["pretrain", "--max-steps", "many"], 2),  # an argument error
    ],
)
def test_help_and_argument_errors_import_no_backend(args, expected_code, tmp_path):
    code = (
        "import sys\n"
        "from keras_gpt.cli import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit as exit:\n"
        f"    assert exit.code == {expected_code}, exit.code\n"
        "print(sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules))\n"
    )
    out = run_python(["-c", code], backend=BACKEND, cwd=tmp_path).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_recipe_help_lists_every_setting_with_its_default(tmp_path):
    from keras_gpt.training.config import FinetuneConfig, PretrainConfig

    for command, config in (("pretrain", PretrainConfig), ("finetune", FinetuneConfig)):
        out = keras_gpt_command([command, "--help"], tmp_path, check=True).stdout
        for field in dataclasses.fields(config):
            line = next(
                (
                    s
                    for s in out.splitlines()
                    if s.split()[:1] == [f"--{field.name.replace('_', '-')}"]
                ),
                None,
            )
            assert line is not None, f"{command} --help lacks {field.name}"
            assert "(default: " in line and len(line.split()) > 3, line


def test_a_user_mistake_is_one_line_and_exit_status_2(tmp_path):
    proc = keras_gpt_command(["generate", "--preset", str(tmp_path / "missing")], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("keras-gpt: error:")]
    assert len(errors) == 1 and "missing" in errors[0], proc.stderr
    assert not [line for line in proc.stderr.splitlines() if NATIVE_LOG.match(line)], proc.stderr


def test_an_unknown_setting_is_named_and_leaves_no_output(tmp_path):
    proc = keras_gpt_command(["pretrain", "--max-stepz", "5", "--out", "runs/x"], tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "max_stepz" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "runs").exists()


def test_unknown_command_and_debug_traceback(tmp_path):
    proc = keras_gpt_command(["frobnicate"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "keras-gpt: error: unknown command 'frobnicate'; choose one of "
        "pretrain, finetune, generate, export, evaluate, serve"
    )
    proc = keras_gpt_command(["generate", "--preset", "missing", "--debug"], tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr
