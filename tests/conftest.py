import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path | None:
    """../shared beside the clone (CI and the developers' machines); absent in a user's fresh clone."""
    d = Path(os.environ.get("COVO_SHARED", REPO.parent / "shared"))
    return d if d.is_dir() else None


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    from covo_edge.export.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("release") / "tiny", seed=0, progress=lambda *_: None)


@pytest.fixture(scope="session")
def tiny_chat(tiny_dir):
    from covo_edge.export.pipeline import ReferenceChat

    return ReferenceChat(tiny_dir)


@pytest.fixture(scope="session")
def tiny_art(tiny_dir, tmp_path_factory) -> Path:
    """fp32 artifacts of the tiny release (max context 1024 keeps engine profiles small)."""
    from covo_edge.export.exporter import export_release

    return export_release(tiny_dir, tmp_path_factory.mktemp("art") / "fp32", max_context=1024, quiet=True)


@pytest.fixture(scope="session")
def tiny_art16(tiny_dir, tmp_path_factory) -> Path:
    from covo_edge.export.exporter import export_release

    return export_release(tiny_dir, tmp_path_factory.mktemp("art") / "fp16", dtype="fp16", max_context=1024, quiet=True)


@pytest.fixture(scope="session")
def rtx_engines(tiny_art, tmp_path_factory) -> Path:
    """`covo-edge build --target rtx` of the fp32 tiny artifacts (TensorRT-RTX builds without a GPU)."""
    pytest.importorskip("tensorrt_rtx", reason="needs tensorrt-rtx-cu12 (the dev extra installs it)")
    from covo_edge.engines.folder import BuildOptions, build_engines

    out = tmp_path_factory.mktemp("engines") / "fp32"
    build_engines(tiny_art, out, BuildOptions("rtx"), progress=False)
    return out


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
    pytest.importorskip("modelopt", reason="needs the calibration extra (pip install -e '.[calibration]')")
    from covo_edge.calibration.quantize import quantize

    made: dict[str, Path] = {}

    def get(recipe: str) -> Path:
        if recipe not in made:
            out = tmp_path_factory.mktemp("quantized") / recipe
            quantize(tiny_art, out, recipe, count=2, decode_steps=4, report_steps=20, quiet=True)
            made[recipe] = out
        return made[recipe]

    return get
