"""JetPack 6 ships TensorRT 10.3, which we cannot install here: check every node of every exported
graph against the onnx-tensorrt parser's operator table for 10.3 (tests/data, with its source)."""

from pathlib import Path

import pytest

from conftest import needs

onnx = needs("onnx", "export")

from covo_edge.runtime.manifest import Manifest  # noqa: E402

TABLE = Path(__file__).parent / "data" / "onnx_tensorrt_operators_10.3.md"
MAX_OPSET = 20  # "supports operators in the inclusive range of opset 9 to opset 20"
TYPE_NAMES = {1: "FP32", 10: "FP16", 16: "BF16", 6: "INT32", 7: "INT64", 9: "BOOL", 3: "INT8", 22: "INT4",
              17: "FP8"}


def supported_ops() -> dict[str, set[str]]:
    ops = {}
    for line in TABLE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[1] == "Y":
            ops[cells[0]] = {t.strip() for t in cells[2].split(",")}
    return ops


def test_table_is_the_parser_list():
    ops = supported_ops()
    assert len(ops) > 120 and "MatMul" in ops and "STFT" not in ops


def problems_10_3(art, graphs=None) -> list[str]:
    """Every node of the graphs against the 10.3 parser's table: op, first input's type, opset, functions."""
    ops = supported_ops()
    problems = []
    manifest = Manifest.load(art)
    for name in graphs or manifest.graphs:
        spec = manifest.graphs[name]
        model = onnx.shape_inference.infer_shapes(onnx.load(str(art / spec.file), load_external_data=False))
        g = model.graph
        for o in model.opset_import:
            if o.domain not in ("", "ai.onnx") or o.version > MAX_OPSET:
                problems.append(f"{name}: opset {o.domain or 'ai.onnx'} {o.version} (10.3 reads 9 to {MAX_OPSET})")
        if model.functions:
            problems.append(f"{name} carries ONNX functions")
        types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]}
        types.update({t.name: t.data_type for t in g.initializer})
        initializers = {t.name for t in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
        typed = 0
        for node in g.node:
            if node.op_type not in ops:
                problems.append(f"{name}: {node.op_type} is not supported by the 10.3 parser")
                continue
            kind = TYPE_NAMES.get(types.get(node.input[0]), "?") if node.input else "?"
            typed += kind != "?"
            if node.op_type not in ("Shape", "Cast", "Constant") and kind not in ops[node.op_type] | {"?"}:
                problems.append(f"{name}: {node.op_type} on {kind} (10.3 lists {sorted(ops[node.op_type])})")
            if node.op_type == "Pad" and len(node.input) > 3 and node.input[3] and node.input[3] not in initializers:
                problems.append(f"{name}: Pad axes must be an initializer")
        assert typed >= 0.9 * len(g.node), f"{name}: shape inference typed only {typed} of {len(g.node)} nodes"
    return sorted(set(problems))


@pytest.mark.parametrize("fixture", ["tiny_art", "tiny_art16"])
def test_every_node_is_supported_by_tensorrt_10_3(request, fixture):
    problems = problems_10_3(request.getfixturevalue(fixture))
    assert not problems, "\n".join(problems)
