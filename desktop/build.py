"""`python -m covo_edge.desktop.build`: the one-folder desktop build of `covo-edge-app` with PyInstaller
(the bundle extra): the runtime, the server and its page, onnxruntime; no torch, no export side.
Prints the folder's size, its tar.gz size and where it is, as JSON."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

NAME = "covo-edge-app"
BUNDLED = ("runtime", "server", "desktop")  # covo_edge's packages in the build
# Never bundled: the export, engines and calibration sides and what only they (or optional imports of
# onnxruntime and numpy) would pull in.
EXCLUDE = ["torch", "transformers", "onnx", "onnxscript", "tensorrt_rtx", "modelopt", "matplotlib", "tkinter",
           "covo_edge.export", "covo_edge.engines", "covo_edge.calibration", "yaml", "IPython", "pytest", "PIL",
           "cuda", "cuda_bindings", "polygraphy",  # cuda-bindings: the TensorRT backend, whose TensorRT is not bundled
           "ray", "covo_edge.server.cluster",  # many machines: Ray Serve is no desktop app's
           "readline", "curses", "decimal", "_decimal", "lzma", "_lzma", "bz2", "_bz2", "sqlite3", "pydoc"]  # unused stdlib
DYNAMIC = ["uvicorn.protocols.websockets.websockets_sansio_impl", "uvicorn.protocols.http.h11_impl",
           "uvicorn.lifespan.off", "uvicorn.loops.asyncio"]  # chosen by name at run time


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def compressed_bytes(path: Path) -> int:
    with tempfile.TemporaryDirectory() as d:
        archive = Path(d) / "app.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(path, arcname=path.name)
        return archive.stat().st_size


def stage(work: Path) -> Path:
    """The bundled packages laid out as `covo_edge/...` under work/src, wherever they are installed from (an
    editable install maps covo_edge.runtime to runtime/ through an import hook PyInstaller cannot follow)."""
    import importlib

    src = work / "src"
    shutil.rmtree(src, ignore_errors=True)
    for name in BUNDLED:
        package = Path(importlib.import_module(f"covo_edge.{name}").__file__).parent
        shutil.copytree(package, src / "covo_edge" / name, ignore=shutil.ignore_patterns("__pycache__"))
    return src


def build(dist: Path, work: Path) -> Path:
    import PyInstaller.__main__

    src = stage(work)
    entry = src / "covo_edge" / "desktop" / "entry.py"
    args = [str(entry), "--noconfirm", "--onedir", "--name", NAME, "--distpath", str(dist), "--workpath", str(work),
            "--specpath", str(work), "--paths", str(src), "--log-level", "WARN",
            "--add-data", f"{src / 'covo_edge' / 'server' / 'assets'}:covo_edge/server/assets",
            "--add-data", f"{src / 'covo_edge' / 'server' / 'page'}:covo_edge/server/page"]
    args += [a for m in EXCLUDE for a in ("--exclude-module", m)]
    args += [a for m in DYNAMIC for a in ("--hidden-import", m)]
    PyInstaller.__main__.run(args)
    strip_python(dist / NAME / "_internal")
    return dist / NAME


def strip_python(internal: Path) -> None:
    """Debug symbols out of the interpreter's own libraries (libpython, lib-dynload): a fifth of the folder.
    Wheels' libraries are left alone: auditwheel-patched ones (numpy's OpenBLAS) break when stripped, which
    is why PyInstaller's --strip is not used. Skipped where binutils' strip is absent."""
    strip = shutil.which("strip")
    if strip is None:
        return
    libraries = [*internal.glob("libpython*.so*"), *internal.glob("python3*/lib-dynload/*.so")]
    subprocess.run([strip, "--strip-unneeded", *map(str, libraries)], check=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m covo_edge.desktop.build", description=__doc__)
    p.add_argument("--dist", default="dist", help="where the folder goes (default dist/)")
    p.add_argument("--work", default="build", help="PyInstaller's work folder (default build/)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    folder = build(Path(args.dist).resolve(), Path(args.work).resolve())
    report = {"folder": str(folder), "program": str(folder / NAME), "build_seconds": round(time.perf_counter() - t0, 1),
              "unpacked_mb": round(folder_bytes(folder) / 1e6, 1), "tar_gz_mb": round(compressed_bytes(folder) / 1e6, 1)}
    shutil.rmtree(Path(args.work).resolve() / NAME, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
