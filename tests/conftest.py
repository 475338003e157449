import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Under COVO_EDGE_STRICT=1 (.ci/run sets it) a skip fails the run unless its reason is one of these: what no
# install step can give this machine. A broken or missing extra then turns red instead of hiding its tests.
ALLOWED_SKIPS = ("needs a GPU", "only without a GPU", "only without classic TensorRT", "needs ../shared",
                 "slow, skipped by --skip-slow")
STRICT = os.environ.get("COVO_EDGE_STRICT") == "1"
TINY_VOICES = ["prompt", "long"]  # the session artifacts' voices, the default first


def pytest_addoption(parser):
    parser.addoption("--skip-slow", action="store_true",
                     help="skip the tests marked slow (local runs; CI runs them all)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: inherently slow (builds, benches, subprocess pipelines); "
                                       "still run in CI, skipped locally with --skip-slow")


# Tests that wait for a background command (tests/conftest.py, Background) run last, so it has the longest time
# to finish beside the others.
LATE = ("bench_run", "rtx_engines16")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: any(f in item.fixturenames for f in LATE))  # stable: the order is kept otherwise
    if config.getoption("--skip-slow"):
        skip = pytest.mark.skip(reason="slow, skipped by --skip-slow")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def _strict(report) -> None:
    if STRICT and report.skipped and not hasattr(report, "wasxfail"):
        reason = _skip_reason(report)
        if not any(reason.startswith(allowed) for allowed in ALLOWED_SKIPS):
            report.outcome = "failed"
            report.longrepr = (f"COVO_EDGE_STRICT: skipped because {reason!r}; this run installs every extra, so "
                               f"the install is broken (skips allowed only for: {', '.join(ALLOWED_SKIPS)})")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _strict(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _strict(outcome.get_result())


def cli(capsys, *args) -> tuple[int, str, str]:
    """`covo-edge ARGS` in this process, as the console script runs it: (status, stdout, stderr)."""
    from covo_edge.runtime.cli import main

    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def needs(module: str, extra: str):
    """importorskip with the reason a strict run reports: which extra brings the module."""
    return pytest.importorskip(module, reason=f"needs {module} (pip install -e '.[{extra}]')")


def shared_dir() -> Path | None:
    """../shared beside the clone (CI and the developers' machines); absent in a user's fresh clone."""
    d = Path(os.environ.get("COVO_SHARED", REPO.parent / "shared"))
    return d if d.is_dir() else None


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    needs("torch", "export")
    from covo_edge.export.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("release") / "tiny", seed=0, progress=lambda *_: None)


@pytest.fixture(scope="session")
def tiny_chat(tiny_dir):
    from covo_edge.export.pipeline import ReferenceChat

    return ReferenceChat(tiny_dir)


class Background:
    """A `covo-edge` command in a process of its own, started early so that it runs on the core the tests
    leave idle (they run one at a time); waited for where its result is needed, killed if the session ends
    first. Exports, engine builds and the bench are each one busy process."""

    def __init__(self, log: Path, *args):
        """stdout goes to `log`, stderr beside it (`log`.stderr)."""
        self.stderr = log.with_name(log.name + ".stderr")
        with open(log, "wb") as out, open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "covo_edge.runtime.cli", *map(str, args)],
                                         stdout=out, stderr=err)

    def wait(self, timeout: float = 1800) -> None:
        code = self.proc.wait(timeout=timeout)
        assert code == 0, f"covo-edge exited {code}:\n{self.stderr.read_text()[-3000:]}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def _jobs(tmp_path_factory):
    """The session's background commands by name: (job, output path); killed at the end if still running."""
    jobs: dict[str, tuple[Background, Path]] = {}
    yield jobs
    for job, _ in jobs.values():
        job.kill()


def _job(jobs: dict, tmp_path_factory, name: str, *args) -> tuple[Background, Path]:
    """Start the background command `name` once (`{out}` in its args: its output path); (job, output path)."""
    if name not in jobs:
        out = tmp_path_factory.mktemp("jobs") / name
        jobs[name] = Background(out.with_name(name + ".log"), *(str(a).replace("{out}", str(out)) for a in args)), out
    return jobs[name]


def _needed(request, fixture: str) -> bool:
    return any(fixture in item.fixturenames for item in request.session.items)


def _fp16_export(jobs, tmp_path_factory, tiny_dir: Path):
    return _job(jobs, tmp_path_factory, "fp16", "export", tiny_dir, "-o", "{out}", "--dtype", "fp16",
                "--max-context", "1024")


@pytest.fixture(scope="session")
def tiny_art(tiny_dir, tmp_path_factory, request, _jobs) -> Path:
    """fp32 artifacts of the tiny release (max context 1024 keeps engine profiles small), exported through
    `covo-edge export --voice prompt --voice long`: `prompt` (the default, 43 frames) and `long` (643 frames,
    past the streaming windows). The fp16 export runs beside it, in a process of its own."""
    from covo_edge.runtime.cli import main

    if _needed(request, "tiny_art16"):
        _fp16_export(_jobs, tmp_path_factory, tiny_dir)
    out = tmp_path_factory.mktemp("art") / "fp32"
    voices = [arg for v in TINY_VOICES for arg in ("--voice", v)]
    assert main(["export", str(tiny_dir), "-o", str(out), *voices, "--max-context", "1024"]) == 0  # the CLI path
    if _needed(request, "rtx_engines"):
        _rtx_build(_jobs, tmp_path_factory, "rtx-fp32", out)
    return out


@pytest.fixture(scope="session")
def tiny_art16(tiny_dir, tmp_path_factory, request, _jobs) -> Path:
    """fp16 artifacts of the tiny release (`covo-edge export --dtype fp16`)."""
    job, out = _fp16_export(_jobs, tmp_path_factory, tiny_dir)
    job.wait()
    if _needed(request, "rtx_engines16"):
        _rtx_build(_jobs, tmp_path_factory, "rtx-fp16", out)
    if _needed(request, "bench_run"):
        _bench(_jobs, tmp_path_factory, tiny_dir, request.getfixturevalue("tiny_art"), out)
    return out


def _rtx_build(jobs, tmp_path_factory, name: str, art: Path):
    needs("tensorrt_rtx", "engines")
    return _job(jobs, tmp_path_factory, name, "build", art, "--target", "rtx", "-o", "{out}")


@pytest.fixture(scope="session")
def rtx_engines(tiny_art, tmp_path_factory, _jobs) -> Path:
    """`covo-edge build --target rtx` of the fp32 tiny artifacts (TensorRT-RTX builds without a GPU)."""
    job, out = _rtx_build(_jobs, tmp_path_factory, "rtx-fp32", tiny_art)
    job.wait()
    return out


@pytest.fixture(scope="session")
def rtx_engines16(tiny_art16, tmp_path_factory, _jobs) -> Path:
    """`covo-edge build --target rtx` of the fp16 tiny artifacts."""
    job, out = _rtx_build(_jobs, tmp_path_factory, "rtx-fp16", tiny_art16)
    job.wait()
    return out


def _bench(jobs, tmp_path_factory, tiny_dir: Path, art: Path, art16: Path):
    needs("matplotlib", "export")
    return _job(jobs, tmp_path_factory, "bench", "bench", "--model-dir", tiny_dir, "--artifacts", art,
                "--compare", art16, "--new-tokens", 40, "--json", "{out}.json", "--chart", "{out}.png")


@pytest.fixture(scope="session")
def bench_run(tiny_dir, tiny_art, tiny_art16, tmp_path_factory, _jobs) -> tuple[Path, Path, Path]:
    """One `covo-edge bench --compare` run (one bench is long): its JSON file, what it printed, its chart."""
    job, out = _bench(_jobs, tmp_path_factory, tiny_dir, tiny_art, tiny_art16)
    job.wait()
    return out.with_suffix(".json"), out.with_name("bench.log"), out.with_suffix(".png")


@pytest.fixture
def engines_index(tmp_path):
    """engines.json for some graphs of some artifacts, with placeholder engine files: what the compatibility
    check and `verify` read, without building (these files are not engines and are never run)."""
    from covo_edge.engines.folder import BuildOptions, recipes
    from covo_edge.runtime.engines_manifest import EngineEntry, EnginesManifest
    from covo_edge.runtime.manifest import Manifest

    def write(art: Path, graphs: list[str] | None = None, version: str = "1.7.1.116",
              options: BuildOptions = BuildOptions("rtx")) -> tuple[Path, EnginesManifest]:
        manifest = Manifest.load(art)
        names = graphs or list(manifest.graphs)
        index = EnginesManifest(1, manifest.source.release, {})
        for g, recipe in recipes(manifest, options, names, version, None).items():
            (tmp_path / f"{g}.engine").write_bytes(b"placeholder")
            index.engines[g] = EngineEntry(f"{g}.engine", len(b"placeholder"), "0" * 64, recipe, 0.0, "")
        index.save(tmp_path)
        return tmp_path, index

    return write


@pytest.fixture(scope="session")
def tiny_quantized(tiny_art, tmp_path_factory):
    """recipe name -> quantized tiny artifacts (each made once per session, few calibration steps)."""
    needs("modelopt", "calibration")
    from covo_edge.calibration.quantize import quantize

    made: dict[str, Path] = {}

    def get(recipe: str) -> Path:
        if recipe not in made:
            out = tmp_path_factory.mktemp("quantized") / recipe
            quantize(tiny_art, out, recipe, count=2, decode_steps=4, report_steps=20, quiet=True)
            made[recipe] = out
        return made[recipe]

    return get
