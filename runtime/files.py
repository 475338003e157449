"""Files in and out: inputs read with a clear error, outputs checked before any work and written whole
(through a temp file or folder beside the target, renamed at the end) or not at all."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import soundfile as sf

from .errors import InputError, OutputError, os_reason

STAMP = ".covo-edge"  # marks a folder covo-edge wrote, so --force never deletes anyone else's


def read_npy(path: str | Path, what: str) -> np.ndarray:
    """A plain (unpickled) .npy array, or InputError naming the file and what it should hold."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"cannot read {what} {path}: {'it is a directory' if path.is_dir() else 'no such file'}")
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
            f.seek(0)
            if magic == b"\x93NUMPY":
                return np.load(f, allow_pickle=False)
    except OSError as e:
        raise InputError(f"cannot read {what} {path}: {os_reason(e)}") from None
    except (ValueError, EOFError) as e:
        why = "it holds pickled objects" if "pickle" in str(e) else str(e).splitlines()[0]
        raise InputError(f"{path} is not a plain .npy array of {what} ({why}); save them with numpy.save") from None
    raise InputError(f"{path} is not a .npy file of {what}; save them with numpy.save")


def _first_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir(path: str | Path) -> Path:
    """Fail now, before any work, if `path` cannot become or be a writable directory."""
    path = Path(path)
    base = _first_existing(path.absolute())
    if not base.is_dir():
        where = "is a file" if base == path.absolute() else f"lies under {base}, which is a file"
        raise OutputError(f"cannot write to {path}: it {where}; choose another --output-dir")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to {path}: permission denied on {base}")
    return path


def check_output_file(path: str | Path, option: str) -> Path:
    """Fail now, before any work, if `path` cannot be written as a file."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {option} {path}: it is a directory; give a file name")
    base = _first_existing(path.absolute().parent)
    if not base.is_dir():
        raise OutputError(f"cannot write {option} {path}: {base} is a file, not a directory")
    if not os.access(base, os.W_OK | os.X_OK) or path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"cannot write {option} {path}: permission denied")
    return path


def write_atomic(path: str | Path, write: Callable[[BinaryIO], Any]) -> None:
    """Call write(file) on a temp file beside `path`, then rename it over `path`; any failure (disk full,
    permission, a directory in the way) leaves nothing behind and raises OutputError."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; an output is an ordinary file
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {os_reason(e)}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def wav_bytes(wav: np.ndarray, sample_rate: int) -> bytes:
    """A float32 WAV in memory: written by Python's file I/O afterwards, so a full disk is an OSError
    rather than a short file libsndfile might not report."""
    buf = io.BytesIO()
    sf.write(buf, wav, sample_rate, subtype="FLOAT", format="WAV")
    return buf.getvalue()


def write_wav(path: str | Path, wav: np.ndarray, sample_rate: int) -> None:
    data = wav_bytes(wav, sample_rate)
    write_atomic(path, lambda f: f.write(data))


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Compressed: the intermediates of a turn are mostly smooth floats."""
    write_atomic(path, lambda f: np.savez_compressed(f, **arrays))


class WavWriter:
    """A mono float32 WAV written as samples arrive, under `NAME.part` (a player can follow it) until
    `close` renames it to its name, so the name only ever holds a whole file; `abort` removes it. Written
    by Python's file I/O: a full disk is an OutputError, not a short file."""

    def __init__(self, path: str | Path, sample_rate: int):
        self.path = Path(path)
        self.part = self.path.with_name(self.path.name + ".part")
        self.samples = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.part, "wb")
            self.file.write(self._header(sample_rate, 0xFFFFFFFF - 36))  # unknown length while streaming
        except OSError as e:
            raise OutputError(f"cannot write {self.part}: {os_reason(e)}") from None
        self.sample_rate = sample_rate

    @staticmethod
    def _header(rate: int, data_bytes: int) -> bytes:
        fmt = struct.pack("<HHIIHH", 3, 1, rate, 4 * rate, 4, 32)  # IEEE float, mono, 32 bits
        return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVEfmt " + struct.pack("<I", 16) + fmt
                + b"data" + struct.pack("<I", data_bytes))

    def write(self, samples: np.ndarray) -> None:
        try:
            self.file.write(np.asarray(samples, "<f4").tobytes())
            self.file.flush()
        except OSError as e:
            self.abort()
            raise OutputError(f"cannot write {self.part}: {os_reason(e)}") from None
        self.samples += len(samples)

    def close(self) -> None:
        try:
            self.file.seek(0)
            self.file.write(self._header(self.sample_rate, 4 * self.samples))
            self.file.close()
            os.chmod(self.part, 0o644)
            os.replace(self.part, self.path)
        except OSError as e:
            self.abort()
            raise OutputError(f"cannot write {self.path}: {os_reason(e)}") from None

    def abort(self) -> None:
        self.file.close()
        if self.part.exists():
            self.part.unlink()


def written_by(path: Path) -> str | None:
    """The covo-edge command that wrote this folder, from its stamp (None for anyone else's folder)."""
    try:
        return json.loads((path / STAMP).read_text())["written_by"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextmanager
def staged_directory(out: str | Path, command: str, force: bool = False) -> Iterator[Path]:
    """Yield a temp dir beside `out`; on success it becomes `out` (replacing, with `force`, a folder
    the same covo-edge command wrote before), on any failure it is removed and `out` is untouched."""
    out = Path(out)
    if out.is_file():
        raise OutputError(f"cannot write to {out}: it is a file; choose another directory")
    replace = out.is_dir() and any(out.iterdir())
    if replace:
        owner = written_by(out)
        if owner != command:
            raise OutputError(
                f"{out} exists and was not written by `covo-edge {command}`; choose a new directory "
                "(covo-edge never deletes a folder it did not write)"
            )
        if not force:
            raise OutputError(f"{out} exists (an earlier `covo-edge {command}`): pass --force to replace it")
    base = _first_existing(out.absolute().parent)
    if not base.is_dir():
        raise OutputError(f"cannot write to {out}: {base} is a file, not a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise OutputError(f"cannot write to {out}: {os_reason(e)}") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        _finish(tmp, out, command, replace)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot write to {out}: {os_reason(e)}") from None


def _finish(tmp: Path, out: Path, command: str, replace: bool) -> None:
    """Stamp the staged folder and put it in place; an earlier `out` is restored if the swap fails."""
    (tmp / STAMP).write_text(json.dumps({"written_by": command}) + "\n")
    for f in [tmp, *tmp.rglob("*")]:
        f.chmod(0o755 if f.is_dir() else 0o644)
    if not replace:
        if out.exists():
            out.rmdir()
        tmp.rename(out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
    out.rename(old / out.name)
    try:
        tmp.rename(out)
    except OSError:
        (old / out.name).rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)
