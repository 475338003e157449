"""Outputs appear whole or not at all, and --force only ever replaces a folder the same command wrote."""

import numpy as np
import pytest

from covo_edge.runtime.errors import InputError, OutputError
from covo_edge.runtime.files import STAMP, read_npy, staged_directory, write_atomic, write_npz, written_by


def test_a_staged_folder_appears_whole_and_stamped(tmp_path):
    with staged_directory(tmp_path / "out", "export") as tmp:
        (tmp / "a.txt").write_text("a")
        assert not (tmp_path / "out").exists()
    assert (tmp_path / "out" / "a.txt").read_text() == "a" and written_by(tmp_path / "out") == "export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_force_replaces_only_the_same_commands_folder(tmp_path):
    out = tmp_path / "out"
    with staged_directory(out, "export") as tmp:
        (tmp / "old.txt").write_text("old")
    with pytest.raises(OutputError, match="exists \\(an earlier `covo-edge export`\\): pass --force"):
        with staged_directory(out, "export"):
            pass
    with pytest.raises(OutputError, match="was not written by `covo-edge make-tiny`"):
        with staged_directory(out, "make-tiny", force=True):
            pass
    with staged_directory(out, "export", force=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == [STAMP, "new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_folder_someone_else_wrote_is_never_deleted(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(OutputError, match="never deletes a folder it did not write"):
        with staged_directory(mine, "export", force=True):
            pass
    assert (mine / "thesis.tex").read_text() == "precious"
    empty = tmp_path / "empty"
    empty.mkdir()
    with staged_directory(empty, "export"):
        pass  # an empty folder is simply used
    assert written_by(empty) == "export"


def test_a_failure_leaves_the_earlier_folder_untouched(tmp_path):
    out = tmp_path / "out"
    with staged_directory(out, "export") as tmp:
        (tmp / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with staged_directory(out, "export", force=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("boom")
    assert (out / "old.txt").read_text() == "old" and not (out / "new.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_atomic_write_that_fails_leaves_nothing(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"before")

    def fail(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match="cannot write .*x.bin: No space left on device"):
        write_atomic(target, fail)
    assert target.read_bytes() == b"before" and sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]
    write_npz(tmp_path / "d.npz", {"a": np.arange(3)})
    assert np.load(tmp_path / "d.npz")["a"].tolist() == [0, 1, 2]
    assert (tmp_path / "d.npz").stat().st_mode & 0o777 == 0o644


def test_read_npy_names_the_problem(tmp_path):
    np.save(tmp_path / "ok.npy", np.arange(4))
    assert read_npy(tmp_path / "ok.npy", "codes").tolist() == [0, 1, 2, 3]
    (tmp_path / "text.npy").write_text("1 2 3")
    np.save(tmp_path / "objects.npy", np.array([{}], dtype=object), allow_pickle=True)
    cases = {tmp_path / "missing.npy": "no such file", tmp_path: "it is a directory",
             tmp_path / "text.npy": "is not a .npy file of codes", tmp_path / "objects.npy": "it holds pickled objects"}
    for path, message in cases.items():
        with pytest.raises(InputError, match=message):
            read_npy(path, "codes")
