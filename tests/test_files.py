"""keras_gpt.files: a file written atomically is either the old one or the whole new one."""

import json
import os

import pytest

from keras_gpt.files import atomic_path, write_json_atomic, write_text_atomic

pytestmark = pytest.mark.backend_independent


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "metadata.json"
    write_json_atomic(target, {"tokens": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            temporary.write_text('{"tok')  # half written, then the writer fails
            raise RuntimeError("disk full")
    assert json.loads(target.read_text()) == {"tokens": 1}
    assert os.listdir(tmp_path) == ["metadata.json"]


def test_a_finished_write_replaces_the_file_whole(tmp_path):
    target = tmp_path / "notes.txt"
    write_text_atomic(target, "old")
    with atomic_path(target) as temporary:
        assert temporary.parent == tmp_path and temporary != target
        temporary.write_text("new")
        assert target.read_text() == "old"  # readers see the old file until the rename
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["notes.txt"]
    with atomic_path(tmp_path / "folder") as temporary:  # a folder works the same way
        temporary.mkdir()
        (temporary / "a").write_text("a")
    assert (tmp_path / "folder" / "a").read_text() == "a"
