"""torchao's PT2E int8 as its users run it: torch.export, X86InductorQuantizer (static int8 activations, per-channel
weights), prepare_pt2e -> calibration -> convert_pt2e, then torch.compile with freezing (Inductor's oneDNN int8
kernels) and dynamic shapes, served with pipeline-style batching. Calibrated on the default task's train split
(as ours is), never on the corpus."""
from __future__ import annotations

from .corpus_variants import Predictor, Spec, hf_tokenizer, input_names, pipeline_style, torch_model

CALIB_BATCHES, CALIB_BATCH_SIZE = 8, 16


def build(spec: Spec) -> Predictor:
    import torch
    import torch._inductor.config as inductor_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config)

    from .capture import capture
    from .data import calibration_batches, load_rotten_tomatoes

    inductor_config.freezing = True  # constant-folds the int8 weights: what the oneDNN qlinear kernels need
    names = input_names(spec)
    tokenizer = hf_tokenizer(spec)
    graph = capture(torch_model(spec), names).module
    graph.graph.eliminate_dead_code()  # prepare_pt2e fails on unused layers
    graph.recompile()
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for b in calibration_batches(load_rotten_tomatoes(), tokenizer, CALIB_BATCHES, CALIB_BATCH_SIZE,
                                     spec.max_seq_len):
            prepared(**{n: b[n] for n in names})
    compiled = torch.compile(convert_pt2e(prepared), dynamic=True)

    def run(inputs: dict):
        with torch.no_grad():
            out = compiled(**inputs)
        return (out.logits if hasattr(out, "logits") else out[0] if isinstance(out, (tuple, list)) else out).numpy()

    predictor = pipeline_style(tokenizer, run, names, spec, "pt")
    predictor.note += "; torch.compile(dynamic=True), freezing"
    return predictor
