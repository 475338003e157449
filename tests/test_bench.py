"""`covo-edge bench`: a measurement command, not a timed assertion; it reports every stage for both sides."""

import pytest

pytest.importorskip("torch")


def test_bench_prints_both_sides_and_draws_them(tiny_dir, tiny_art, tmp_path):
    """A measurement command, not a timed assertion: it reports every stage for both sides."""
    from covo_edge.export.bench import STAGES, bench

    svg = tmp_path / "b.svg"
    result = bench(str(tiny_dir), str(tiny_art), seconds=1.0, tokens=8, repeats=1, svg=str(svg))
    for side in ("runtime", "reference"):
        assert set(STAGES) <= set(result[side]) and all(result[side][s] > 0 for s in STAGES)
    text = svg.read_text()
    assert text.startswith("<svg") and text.count("<rect") == 2 * len(STAGES) + len(STAGES)


