"""The console script: one `covo-edge` offering every side's commands, a runtime that stands alone
(imports neither torch nor the export, engines or calibration side), and the demo end to end."""

import ast
import subprocess
import sys

import pytest
import soundfile as sf

from conftest import REPO, cli, needs

BLOCK_TORCH = (
    "import sys\n"
    "class Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'torch' or name.startswith('torch.'): raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
    "sys.meta_path.insert(0, Block())\n"
)


def run(*args, check=True, prelude=""):
    code = prelude + "import sys\nfrom covo_edge.runtime.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=check,
                          timeout=600)


def imported_modules(path, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in a file of `package`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            found.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
    return found


def test_the_runtime_imports_nothing_of_the_other_sides():
    """Every import statement under runtime/, server/ and desktop/ (which ship with the runtime), relative ones
    resolved: no torch, no export/engines/calibration; and the runtime imports neither the server nor the app."""
    others = ("torch", "covo_edge.export", "covo_edge.engines", "covo_edge.calibration")
    found = []
    for side, forbidden in (("runtime", (*others, "covo_edge.server", "covo_edge.desktop")), ("server", others),
                            ("desktop", others)):
        for path in sorted((REPO / side).rglob("*.py")):
            package = ".".join(["covo_edge", *path.relative_to(REPO).parent.parts])
            found += [f"{path.relative_to(REPO)}:{line} imports {name}" for line, name in imported_modules(path, package)
                      if any(name == f or name.startswith(f + ".") for f in forbidden)]
    assert not found, "\n".join(found)
    assert ("covo_edge.runtime.manifest" in
            [n for _, n in imported_modules(REPO / "runtime" / "backends" / "onnxruntime.py", "covo_edge.runtime.backends")])


def test_runtime_imports_without_torch():
    code = (
        BLOCK_TORCH + "import importlib, pkgutil\n"
        "import covo_edge.runtime as rt\n"
        "for m in pkgutil.walk_packages(rt.__path__, rt.__name__ + '.'): importlib.import_module(m.name)\n"
        "from covo_edge.runtime.cli import build_parser; build_parser()\n"
        "import covo_edge.server.app, covo_edge.server.serve, covo_edge.server.bench\n"
        "assert 'torch' not in sys.modules\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('covo_edge.export'))\n"
        "assert loaded == ['covo_edge.export', 'covo_edge.export.commands'], loaded  # registering is light\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600)


def test_one_command_offers_every_sides_subcommands():
    from covo_edge.runtime.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {"chat", "token2wav", "check", "bench-batch", "make-tiny", "export", "demo", "bench",
                                "bench-kv", "build", "verify", "quantize", "serve", "bench-serve"}


def test_an_export_command_without_the_export_extra_says_so(tmp_path):
    out = run("make-tiny", tmp_path / "t", check=False, prelude=BLOCK_TORCH)
    assert out.returncode == 2 and not (tmp_path / "t").exists()
    assert out.stderr.strip() == ("covo-edge make-tiny: needs the export extra (torch is missing): "
                                  "pip install 'covo-edge[export]'")


@pytest.mark.slow
def test_make_tiny_reruns_with_force_and_the_demo_fits_a_screen(tmp_path, capsys):
    needs("torch", "export")
    assert cli(capsys, "make-tiny", tmp_path / "tiny", "--seed", "1")[0] == 0
    code, out, _ = cli(capsys, "make-tiny", tmp_path / "tiny", "--seed", "1", "--force")
    assert code == 0 and "wrote a random-weight tiny release" in out
    wav_path = tmp_path / "reply.wav"
    code, out, err = cli(capsys, "demo", "--model-dir", tmp_path / "tiny", "--output", wav_path,
                                "--max-new-tokens", "80")
    lines = out.strip().splitlines()
    assert len(lines) <= 6 and all(len(line) <= 240 for line in lines), out
    assert lines[2].startswith("text: ")
    if code == 0:
        info = sf.info(str(wav_path))
        assert info.samplerate == 24000 and info.frames % 240 == 0
    else:  # a random reply without audio codes is reported, not written as an empty wav
        assert code == 1 and "no audio codes" in err and not wav_path.exists()


def test_demo_errors_are_one_line(tmp_path, capsys):
    needs("torch", "export")
    code, _, err = cli(capsys, "demo", "--model-dir", tmp_path / "missing")
    assert code == 2 and err.count("\n") == 1 and "not a directory" in err


def test_a_long_reply_is_cut_to_a_line_with_its_length_said():
    from covo_edge.runtime.cli import shorten

    assert shorten("short") == "'short'"
    long = "x" * 500
    assert shorten(long) == f"{'x' * 200!r}... (500 characters)"
