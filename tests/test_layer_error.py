"""The per-layer output error report on the tiny BERT: every linear, worst first, each side of the error bounded."""
from __future__ import annotations

import pytest

from ptqkit.layer_error import format_table, layer_errors


@pytest.mark.parametrize("isa", ["avx2", "avx512_vnni"])  # 7-bit weights (snapped in the converted model), 8-bit
def test_layer_report_covers_every_linear_worst_first(tiny, tiny_onnx, tiny_contracts, isa):
    """On the calibration batches, as the pipeline reports it."""
    batches = [tiny.batch(8, 16, 100 + i) for i in range(4)]
    errors = layer_errors(tiny_onnx["model"], tiny_contracts[isa].q, batches)
    assert len(errors) == tiny.LINEARS
    # quantizing one side alone loses less than quantizing both; int8 keeps every layer well above 0 dB
    assert all(0 < e.local_sqnr < 80 and e.weight_sqnr > e.local_sqnr and e.act_sqnr > e.local_sqnr for e in errors)
    assert [e.local_sqnr for e in errors] == sorted(e.local_sqnr for e in errors)
    assert any(e.bias_share > 0.001 for e in errors)  # rounding shifts some layer's mean output
    assert "classifier" in format_table(errors)
