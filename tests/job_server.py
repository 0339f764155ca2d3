"""Runs test workers one after another in one long-lived process (tests/helpers.py: run_job).

A fresh Python process spends 8-15 s importing Keras and its backend on the 2-core
machines this suite runs on, before a worker's second of work; the cross-backend tests
start one per backend and test. This process imports the backend once (Keras under
`KERAS_BACKEND`, or plain TensorFlow without it) and then runs each job as `python ARGS`
would: a script as `__main__`, or `-c CODE`, with `sys.argv` set, in the job's working
directory, after `keras.utils.clear_session()` (fresh layer names and graphs, as in a new
process). Everything the jobs share is what a process keeps between two scripts: imported
modules and the backend's compiled-program caches.

Protocol: one JSON object a line on stdin, `{"args": [...], "cwd": "..."}`; one a line
back on the original stdout, `{"status": exit status, "stderr": its tail}`. Anything else
written to stdout or stderr goes to this process's stderr (the client's log file).
"""

import contextlib
import io
import json
import os
import runpy
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the tests' helpers


def run(args: list[str]) -> int:
    if args[0] == "-c":
        sys.argv = ["-c", *args[2:]]
        exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__"})
    else:
        sys.argv = list(args)
        runpy.run_path(args[0], run_name="__main__")
    return 0


def main() -> None:
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # jobs' prints and native output go to the log, not the replies
    keras = None
    if os.environ.get("KERAS_BACKEND"):
        import keras
    else:
        import tensorflow  # noqa: F401  (plain TensorFlow, as a serving process has it)
    home = os.getcwd()
    for line in sys.stdin:
        job = json.loads(line)
        if keras is not None:
            keras.utils.clear_session()
        errors = io.StringIO()
        try:
            os.chdir(job.get("cwd") or home)
            with contextlib.redirect_stderr(errors):
                status = run(job["args"])
        except SystemExit as stop:
            status = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        except BaseException:  # noqa: BLE001  (reported to the test, which fails)
            status = 1
            errors.write(traceback.format_exc())
        finally:
            os.chdir(home)
        sys.stderr.write(errors.getvalue())
        reply.write(json.dumps({"status": status, "stderr": errors.getvalue()[-4000:]}) + "\n")


if __name__ == "__main__":
    main()
