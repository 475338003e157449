"""Backend conformance: the same tests for every backend this machine can run. ONNX Runtime always runs;
the TensorRT backend runs where there is a CUDA GPU and a TensorRT module for it (TensorRT-RTX on compute
capability 8.6/8.9/12.x, classic TensorRT elsewhere), on engines built from the same tiny artifacts, and
is skipped with the reason otherwise. Every backend is held to the PyTorch reference (teacher-forced logits
over two turns of one conversation), never to another backend."""

import importlib.util

import numpy as np
import onnxruntime as ort
import pytest
from conftest import needs
from covo_edge.runtime import Assistant, ContextFullError, Debug
from covo_edge.runtime.backends.cuda import Gpu, probe
from covo_edge.runtime.check import run_graph
from covo_edge.runtime.engines_manifest import RTX_PORTABLE
from covo_edge.runtime.synthetic import interleaved_reply, synthetic_utterance


def tensorrt_target() -> str:
    """The engine target this machine runs, or pytest.skip with why none."""
    gpu = probe()
    if not isinstance(gpu, Gpu):
        pytest.skip(f"needs a GPU: TensorRT backend not run ({gpu})")
    if importlib.util.find_spec("tensorrt_rtx") and gpu.compute_capability in RTX_PORTABLE:
        return "rtx"
    if importlib.util.find_spec("tensorrt"):
        return "tensorrt"
    pytest.skip(f"needs a GPU with TensorRT: none for this {gpu.name} (compute capability "
                f"{gpu.compute_capability}; TensorRT-RTX runs on {', '.join(RTX_PORTABLE)})")


@pytest.fixture(scope="session")
def trt_engines(tiny_art, tmp_path_factory):
    target = tensorrt_target()
    from covo_edge.engines.folder import BuildOptions, build_engines

    out = tmp_path_factory.mktemp("engines") / f"conformance-{target}"
    build_engines(tiny_art, out, BuildOptions(target), progress=False)
    return out


@pytest.fixture(params=["onnxruntime", "tensorrt"])
def load(request, tiny_art):
    kwargs = {"backend": request.param}
    if request.param == "tensorrt":
        kwargs["engines"] = request.getfixturevalue("trt_engines")
    return lambda **more: Assistant.load(tiny_art, **kwargs, **more)


TOLERANCE = {"onnxruntime": 2e-4, "tensorrt": 1e-3}  # max |logit error| / max |reference logit|, fp32 graphs
TURNS = [(1.5, 0), (1.0, 1)]  # (seconds, seed) of each question


def _forced(n: int, seed: int) -> np.ndarray:
    return interleaved_reply(n, 151671, 16384, seed)


@pytest.fixture(scope="module")
def reference(tiny_dir):
    """The PyTorch reference's prefill and teacher-forced step logits for two turns of one conversation."""
    needs("torch", "export")
    from covo_edge.export.pipeline import ReferenceChat

    chat = ReferenceChat(tiny_dir, mode="text")
    turns = []
    for seconds, seed in TURNS:
        r = chat.reply(synthetic_utterance(seconds, 16000, seed=seed), 16000, force_tokens=_forced(8, seed).tolist(),
                       keep_logits=True)
        turns.append(np.stack(r.step_logits))
    return turns


class _ForgetfulBackend:
    """A backend whose next backbone call, once armed, sees zeros in place of the cached keys and values:
    a conversation that lost its cache between turns."""

    def __init__(self, inner, past_names):
        self.inner, self.past, self.armed = inner, set(past_names), False

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def run(self, graph, feeds, host=()):
        if self.armed and graph == "backbone":
            self.armed = False
            feeds = {k: np.zeros_like(v.numpy() if isinstance(v, ort.OrtValue) else v) if k in self.past else v
                     for k, v in feeds.items()}
        return self.inner.run(graph, feeds, host)


def _turn_errors(a: Assistant, reference, between=lambda: None) -> list[float]:
    """Each turn's worst step-logit error against the reference, relative to the reference's largest logit."""
    errors = []
    for (seconds, seed), ref in zip(TURNS, reference):
        dump = {}
        a.reply(synthetic_utterance(seconds, 16000, seed=seed), 16000,
                debug=Debug(force_tokens=_forced(8, seed), dump=dump, step_logits="all"))
        errors.append(float(np.abs(dump["step_logits"] - ref).max() / np.abs(ref).max()))
        between()
    return errors


def test_every_graph_gives_the_manifest_shapes(load):
    a = load()
    for name, spec in a.manifest.graphs.items():
        assert run_graph(a.backend, name, spec).startswith("ran ")


def test_two_turns_match_the_pytorch_reference_with_the_cache_kept(load, reference, request):
    """Both turns' logits within the backend's tolerance of the reference; the second turn is computed over
    the first turn's cache, so it only matches if that cache was kept."""
    a = load(mode="text")
    errors = _turn_errors(a, reference)
    tol = TOLERANCE[request.node.callspec.params["load"]]
    assert max(errors) <= tol, errors


def test_a_dropped_cache_fails_the_second_turn(tiny_art, reference):
    """The check above is sensitive: the same turns with the cache zeroed between them match on turn 1 and
    are far off on turn 2."""
    a = Assistant.load(tiny_art, mode="text")
    forgetful = _ForgetfulBackend(a.model.backend, a.manifest.llm.past_names)
    a.model.backend = forgetful

    def drop():
        forgetful.armed = True

    first, second = _turn_errors(a, reference, between=drop)
    assert first <= TOLERANCE["onnxruntime"] and second > 100 * TOLERANCE["onnxruntime"], (first, second)


def test_a_full_context_ends_the_reply_then_refuses_the_next_turn(load):
    a = load(mode="text")
    a.manifest.llm.max_context = a.context_length + 60  # a 1 s question's prompt is about 30 tokens
    r = a.reply(synthetic_utterance(1.0), 16000, debug=Debug(force_tokens=_forced(200, 2)))  # never the stop id
    assert r.finish_reason == "context_full" and a.context_length == a.max_context
    with pytest.raises(ContextFullError, match="reset"):
        a.reply(synthetic_utterance(1.0), 16000, max_new_tokens=2)
