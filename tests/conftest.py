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
