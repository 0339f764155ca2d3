"""The `keras-gpt` command as a person meets it: fast help, one-line errors, a quiet stderr,
progress that suits where it goes.

Most tests start `python -m keras_gpt.cli` (what the console script runs) in a
fresh process on this pass's backend, from an empty working directory.
"""

import dataclasses
import json
import os
import pty
import re
import select
import subprocess
import sys
import tty

import keras
import pytest
from helpers import run_python, tiny_config, tiny_gpt

from keras_gpt.cli import main

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
        # A preset that is not there: found out before Keras starts (10-15 s).
        (["generate", "no_such_preset/"], 2),
        (["evaluate", "no_such_preset/", "--data", "valid.txt"], 2),
        (["export", "no_such_preset/", "served"], 2),
        (["serve", "no_such_preset/"], 2),
        (["generate", "no_such_registered_name"], 2),
    ],
)
def test_help_argument_errors_and_missing_presets_import_no_backend(args, expected_code, tmp_path):
    code = (
        "import json, sys\n"
        "from keras_gpt.cli import main\n"
        "code = 'returned'\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit as exit:\n"
        "    code = exit.code\n"
        "backends = [m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules]\n"
        "print(json.dumps([code, backends]))\n"
    )
    out = run_python(["-c", code], backend=BACKEND, cwd=tmp_path).stdout
    # Checked here: an exit status the child only asserted would go unchecked
    # when main returned instead of exiting.
    assert json.loads(out.strip().splitlines()[-1]) == [expected_code, []]


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


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_a_run_that_fails_on_its_inputs_leaves_no_output(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["--data", "missing.txt", "--out", "runs/x"]
    if command == "finetune":
        args += ["--preset", "no-such-preset"]
    with pytest.raises(SystemExit) as info:
        main([command, *args])
    assert info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("keras-gpt: error: "), error
    assert "missing.txt" in error[0] or "no-such-preset" in error[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.backend_independent
def test_unknown_command_and_debug_traceback(tmp_path):
    proc = keras_gpt_command(["frobnicate"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "keras-gpt: error: unknown command 'frobnicate'; choose one of "
        "pretrain, finetune, generate, export, evaluate, serve"
    )
    proc = keras_gpt_command(["generate", "--preset", "missing", "--debug"], tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


TEXT = "".join(f"line {i % 7}: the quick brown fox jumps over the lazy dog.\n" for i in range(100))


def pretrain_args(tmp_path) -> list[str]:
    """A tiny `keras-gpt pretrain` at the default verbosity (Keras' progress bar)."""
    data = tmp_path / "corpus.txt"
    data.write_text(TEXT)
    settings = dict(
        data=data, tokenizer="char", out=tmp_path / "run", num_layers=1, num_heads=2,
        hidden_dim=16, sequence_length=16, batch_size=4, max_steps=4, eval_interval=2,
        eval_batches=2, warmup_steps=1, peak_flops=1e9, sample_tokens=8,
    )  # fmt: skip
    return ["pretrain", *(a for k, v in settings.items() for a in (f"--{k}", str(v)))]


# Keras' progress bar and the recipe's own lines are the same code on every backend.
@pytest.mark.backend_independent
def test_progress_into_a_pipe_has_no_escape_codes(tmp_path):
    """Into a pipe (a log file, `| tee`), `keras-gpt pretrain` and `keras-gpt evaluate`
    write plain lines: no ANSI escape codes, no carriage-return redraws, and
    evaluate's stdout is its JSON alone."""
    # Bytes, not text: text mode would turn each "\r" into "\n".
    proc = subprocess.run(
        [sys.executable, "-m", "keras_gpt.cli", *pretrain_args(tmp_path)],
        capture_output=True,
        cwd=tmp_path,
        env={**os.environ, "KERAS_BACKEND": BACKEND},
        timeout=600,
    )
    stdout, stderr = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, stderr[-3000:]
    for name, output in (("stdout", stdout), ("stderr", stderr)):
        for control in ("\x1b[", "\r", "\b"):
            assert control not in output, f"{control!r} in {name}: {output[-2000:]!r}"
    # Progress is still there, a line at a time: Keras' line per fit call, the
    # recipe's rounds and the tokenizing's final figures.
    assert re.search(r"^\s*\d+/\d+ - ", stdout, re.M), stdout
    assert "step 4: train loss" in stdout
    assert re.search(r"^prepare: .* tokens$", stderr, re.M), stderr

    run, data = str(tmp_path / "run"), str(tmp_path / "corpus.txt")
    proc = keras_gpt_command(["evaluate", run, "--data", data], tmp_path, check=True)
    assert "\x1b[" not in proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["perplexity"] > 1


def read_terminal(controller: int, proc: subprocess.Popen, timeout: float = 600) -> str:
    """What the child writes to the terminal whose controlling side is `controller`."""
    chunks = []
    while select.select([controller], [], [], timeout)[0]:
        try:
            data = os.read(controller, 1 << 16)
        except OSError:  # EIO: the child's side is closed
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    return b"".join(chunks).decode("utf-8", "replace")


# Progress does not depend on the backend: a terminal is checked once.
@pytest.mark.backend_independent
def test_progress_on_a_terminal_redraws_itself(tmp_path):
    """On a terminal the live displays stay: Keras' bar and the tokenizing's line
    (written to stderr, which the console script's log filter keeps a terminal)."""
    controller, terminal = pty.openpty()
    tty.setraw(terminal)  # no "\n" -> "\r\n": each "\r" read back was written as one
    proc = subprocess.Popen(
        [sys.executable, "-m", "keras_gpt.cli", *pretrain_args(tmp_path)],
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
        cwd=tmp_path,
        env={**os.environ, "KERAS_BACKEND": BACKEND},
    )
    os.close(terminal)
    try:
        output = read_terminal(controller, proc)
    finally:
        os.close(controller)
    assert proc.returncode == 0, output[-3000:]
    assert "\x1b[" in output  # Keras' bar, in colour
    assert "\rprepare: " in output, output[:3000]


# The flag's way from the command line to the recipe is backend-independent (resuming
# itself is tested on every backend in test_runs.py): it runs once.
@pytest.mark.backend_independent
def test_pretrain_resume_through_the_command_line(tmp_path, capsys):
    from keras_gpt.training import latest_checkpoint, read_metrics
    from keras_gpt.training.pretrain import pretrain

    pretrain(tiny_config(tmp_path, max_steps=2))
    out = tmp_path / "run"
    first = read_metrics(out)
    settings = ["pretrain", "--config", str(out / "config.toml"), "--max-steps", "4"]
    main([*settings, "--resume"])
    rows = read_metrics(out)
    # Continued from step 2's checkpoint (not restarted): one new row, the old one kept.
    assert [r["step"] for r in rows] == [2, 4] and rows[0] == first[0]
    assert latest_checkpoint(out / "checkpoints").name == "step_00000004"
    # Without --resume the same command refuses to touch the run.
    with pytest.raises(SystemExit) as exit:
        main(settings)
    assert exit.value.code == 2 and "--resume" in capsys.readouterr().err
    assert read_metrics(out) == rows


# The flag's way from the command line to the sampler is backend-independent (the samplers
# are tested on every backend in test_generation.py): it runs once.
@pytest.mark.backend_independent
def test_generate_top_p_reaches_the_sampler(tmp_path, capsys):
    import numpy as np

    from keras_gpt.tokenizers import ByteTokenizer

    tokenizer = ByteTokenizer()
    model = tiny_gpt()
    model.save_to_preset(str(tmp_path / "preset"), tokenizer=tokenizer)
    settings = ["generate", "--preset", str(tmp_path / "preset"), "--prompt", "ab"]
    settings += ["--max-new-tokens", "8", "--temperature", "1", "--seed", "5"]
    greedy = model.generate(np.array([[97, 98]]), max_new_tokens=8, sampler="greedy")
    expected = "ab" + tokenizer.decode(greedy[0, 2:].tolist())
    # A nucleus this small holds the most likely token alone: top-p decodes greedily,
    # where plain sampling at temperature 1 from this untrained model would not.
    main([*settings, "--top-p", "1e-6"])
    assert capsys.readouterr().out == expected + "\n"
    main(settings)
    assert capsys.readouterr().out != expected + "\n"


@pytest.mark.skipif(
    BACKEND != "tensorflow", reason="the export command's flags: TensorFlow pass"
)  # Where export runs in the process: on JAX and PyTorch each export also starts a
# TensorFlow child (three here, ~12 s each), the route test_export.py tests.
def test_export_flags_through_the_command_line(tmp_path, capsys):
    """`keras-gpt export`: the generate settings reach the SavedModel, --overwrite is needed
    to replace an export, and --format onnx writes the logits graph (and refuses the
    generate settings, which it has no place for)."""
    import numpy as np
    import onnxruntime

    from keras_gpt.tokenizers import ByteTokenizer

    model = tiny_gpt(max_sequence_length=16)
    preset = tmp_path / "preset"
    model.save_to_preset(str(preset), tokenizer=ByteTokenizer())
    served = tmp_path / "served"
    export = ["export", str(preset), str(served)]
    main([*export, "--max-new-tokens", "4", "--stop-token-ids", "7, 9", "--pad-token-id", "3"])
    metadata_file = served / "assets.extra" / "keras_gpt_export.json"
    metadata = json.loads(metadata_file.read_text())
    assert (metadata["max_new_tokens"], metadata["stop_token_ids"]) == (4, [7, 9])
    assert metadata["pad_token_id"] == 3
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(served)

    with pytest.raises(SystemExit) as exit:
        main(export)
    assert exit.value.code == 2 and "already exists" in capsys.readouterr().err
    assert json.loads(metadata_file.read_text()) == metadata  # untouched
    main([*export, "--overwrite"])
    metadata = json.loads(metadata_file.read_text())
    assert (metadata["max_new_tokens"], metadata["stop_token_ids"]) == (15, [])
    assert metadata["pad_token_id"] == 0

    onnx_file = tmp_path / "gpt.onnx"
    with pytest.raises(SystemExit) as exit:
        main(["export", str(preset), str(onnx_file), "--format", "onnx", "--stop-token-ids", "7"])
    assert exit.value.code == 2 and "--stop-token-ids" in capsys.readouterr().err
    assert not onnx_file.exists()
    onnx_file.write_text("an older file")
    main(["export", str(preset), str(onnx_file), "--format", "onnx", "--overwrite"])
    session = onnxruntime.InferenceSession(str(onnx_file))
    ids = np.array([[5, 9, 2, 33]], "int32")
    mask = np.ones_like(ids)
    (logits,) = session.run(None, {"token_ids": ids, "padding_mask": mask})
    expected = keras.ops.convert_to_numpy(model({"token_ids": ids, "padding_mask": mask}))
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


@pytest.mark.backend_independent
def test_missing_preset_is_one_message_from_every_command(tmp_path, capsys):
    """generate, evaluate, export and serve exit 2 with the same one line for a preset
    that does not exist (main's handler, not one wording per command)."""
    missing = str(tmp_path / "no_such_preset")
    data = tmp_path / "valid.txt"
    data.write_text("hello")
    commands = [
        ["generate", missing],
        ["generate", "--preset", missing],
        ["evaluate", missing, "--data", str(data)],
        ["export", missing, str(tmp_path / "out")],
        ["serve", missing, "--no-warmup"],
    ]
    messages = set()
    for argv in commands:
        with pytest.raises(SystemExit) as error:
            main(argv)
        assert error.value.code == 2, argv
        messages.add(capsys.readouterr().err)
    assert messages == {f"keras-gpt: error: Preset directory {missing!r} does not exist.\n"}


@pytest.mark.backend_independent
def test_generate_checks_its_settings_before_loading(tmp_path, capsys):
    """Bad sampling settings are refused by argparse (exit 2, one line) before any model
    loads: the preset here does not even exist."""
    missing = str(tmp_path / "no_such_preset")
    for flags, expected in [
        (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["--top-k", "0"], "--top-k must be at least 1"),
        (["--temperature", "-1"], "--temperature must be 0 or more"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
        (["--num-samples", "0"], "--num-samples must be at least 1"),
    ]:
        with pytest.raises(SystemExit) as error:
            main(["generate", missing, *flags])
        assert error.value.code == 2
        assert expected in capsys.readouterr().err
    with pytest.raises(SystemExit) as error:
        main(["generate", "--prompt", "hi"])
    assert error.value.code == 2 and "the preset is missing" in capsys.readouterr().err


@pytest.mark.backend_independent
def test_version_and_generate_help_import_no_backend():
    import keras_gpt

    script = (
        "import sys, contextlib, io\n"
        "from keras_gpt.cli import main\n"
        "out = io.StringIO()\n"
        "for argv in (['--version'], ['generate', '--help']):\n"
        "    with contextlib.redirect_stdout(out):\n"
        "        try: main(argv)\n"
        "        except SystemExit as e: assert e.code == 0, e.code\n"
        "print(out.getvalue())\n"
        "print(sorted(m for m in ('tensorflow', 'jax', 'torch') if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert f"keras-gpt {keras_gpt.__version__}" in proc.stdout
    assert "(default: 200)" in proc.stdout  # --max-new-tokens' default is listed
    assert proc.stdout.rstrip().endswith("[]")  # no backend imported
