"""manifest.json of an artifacts directory: the one I/O contract between export, engines and runtime.

The runtime hard-codes no shape or token id: it reads them here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


class ArtifactsError(ValueError):
    """An artifacts directory that cannot be used; the message names the problem and the fix."""


@dataclass
class TensorSpec:
    name: str
    dtype: str  # numpy name: float32, float16, int64
    shape: list[int | str]  # str = a dynamic dim's name


@dataclass
class GraphSpec:
    file: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    sha256: str
    profiles: list[dict[str, list[int]]]  # engine profiles: dynamic dim -> [min, opt, max]
    external_data: list[str] = field(default_factory=list)

    def profile_shapes(self, index: int) -> dict[str, tuple[list[int], list[int], list[int]]]:
        """Input name -> (min, opt, max) shapes of one profile, its dims filled into the inputs' shapes."""
        dims = self.profiles[index]
        return {
            t.name: tuple([d if isinstance(d, int) else dims[d][k] for d in t.shape] for k in range(3))
            for t in self.inputs
        }


@dataclass
class Manifest:
    schema_version: int
    dtype: str  # float32 | float16
    source: dict[str, Any]  # release dir, config checksums, versions
    graphs: dict[str, GraphSpec]
    tokenizer: dict[str, Any]  # files, len, special ids, audio code offset
    prompt: dict[str, str]  # system prompt, first/later turn templates
    llm: dict[str, Any]  # layers, kv heads, head dim, hidden, vocab, max context
    sampling: dict[str, dict[str, Any]]  # first_turn, later_turns
    token2wav: dict[str, Any]  # s_steps, cfg_alpha, upsample, hop, sample rate, latent stats
    voices: dict[str, str]  # name -> dir inside the artifacts
    frontend: dict[str, Any]

    def save(self, directory: Path) -> None:
        (Path(directory) / MANIFEST).write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False))

    @classmethod
    def load(cls, directory: str | Path) -> Manifest:
        path = Path(directory) / MANIFEST
        if not path.is_file():
            raise ArtifactsError(f"{path} not found: pass a directory written by `covo-edge export`")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ArtifactsError(f"{path} is not valid JSON ({e}); re-run `covo-edge export`") from None
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ArtifactsError(
                f"{path} has schema version {d.get('schema_version')}, this covo-edge reads {SCHEMA_VERSION}: "
                "re-export with this version"
            )
        d["graphs"] = {
            k: GraphSpec(
                file=g["file"],
                inputs=[TensorSpec(**t) for t in g["inputs"]],
                outputs=[TensorSpec(**t) for t in g["outputs"]],
                sha256=g["sha256"],
                profiles=g["profiles"],
                external_data=g.get("external_data", []),
            )
            for k, g in d["graphs"].items()
        }
        return cls(**d)
