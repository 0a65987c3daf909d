"""The torch-quant workflow on torch.export graphs: calib -> (amp/fallback) -> (qat) -> quantize, plus state I/O.

    q = Quantizer(device="x86")
    calib_model = q.calib(model)          # observes; outputs identical to fp32
    for batch in calibration_batches: calib_model(**batch)
    q.fallback(q.amp(batches), n=2)       # optional: leave the 2 most sensitive layers in fp32
    qmodel = q.quantize()                 # fake-quant graph
    q.save("state")                       # safetensors + JSON, reloadable with Quantizer.load
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import load_file, save_file

from . import artifacts
from .capture import CaptureError, capture
from .config import QuantConfig
from .errors import UserError
from .int8_attention import MATMUL_OPERANDS, NOT_VIA_INTERFACE, attach_attention, attention_obstacle, extra_matmul
from .lsq import LSQQuantizer
from .observers import NonFiniteInput
from .passes import OBSERVERS_ATTR, QuantPoint, find_quant_points, insert_observers, observer_key
from .qmodel import QuantLinear, fake_quantize

STATE_VERSION = 3  # 2: observers carry channel_mul (runtime SmoothQuant); 3: a point lists the nodes of every call
# The quantizer's states. OBSERVING: activation observers collect statistics, outputs equal fp32 (weights were
# observed once when the observers went in). QUANTIZED: frozen qparams, the graph fake-quantizes every point
# except the fallback layers. TRAINING: QAT, LSQ quantizers with learnable scales in place of the observers.
NEW, OBSERVING, QUANTIZED, TRAINING = "new", "observing", "quantized", "training"


class Quantizer:
    def __init__(self, device: str = "x86", config: QuantConfig | None = None):
        self.config = config or QuantConfig.for_device(device)
        self.state = NEW
        self.points: list[QuantPoint] = []
        self.fallback_layers: list[str] = []
        self.graph: torch.fx.GraphModule | None = None  # the observed graph, shared by every state
        self.captured_how = ""  # how torch.export captured the graph (for the report)
        self.carries_weights = False  # the graph's weights differ from the checkpoint: the saved state has them

    # --- the workflow -------------------------------------------------------------------------------------
    def calib(self, model: torch.nn.Module, input_names: tuple[str, ...] | None = None,
              weights_changed: bool = False) -> torch.fx.GraphModule:
        """Capture a copy of the model (QAT must not train the caller's weights) taking `input_names` (default:
        every input its forward takes) and insert observers; run calibration batches through the returned graph.

        weights_changed: the model's weights are no longer its checkpoint's (SmoothQuant folded scales into
        them), so the saved state must carry them."""
        try:
            captured = capture(copy.deepcopy(model), input_names)
        except CaptureError as e:
            raise UserError(f"model type {_model_type(model)!r} cannot be quantized: {e}") from None
        self.graph, self.captured_how = captured.module, captured.how
        self.points = find_quant_points(self.graph, self.config)
        if not self.points:
            raise UserError("nothing to quantize: every linear was excluded")
        insert_observers(self.graph, self.points, self.config)  # observing, no fake-quant (weights seen once)
        self.state, self.carries_weights = OBSERVING, weights_changed
        return self.graph

    def quantize(self) -> torch.fx.GraphModule:
        """The fake-quant graph: frozen qparams on every point except the fallback layers."""
        graph = self._require_graph()
        if self.state == TRAINING:
            raise RuntimeError("quantize() during QAT: call end_qat() first")
        self._check_observed()
        for key, obs in self.observers().items():
            if not obs.fake_quant:
                obs.freeze()
        self._apply_fallback()
        self.state = QUANTIZED
        return graph

    def convert(self, model: torch.nn.Module) -> torch.nn.Module:
        """The converted quantized model (qmodel.py): a copy of the float HF `model` carrying the graph's current
        weights, with every quantized linear a QuantLinear holding these frozen qparams (and its input's runtime
        SmoothQuant multiplier) and, with attention matmul points, every attention module carrying a QuantAttention
        (run by the registered int8 attention function). TorchScript and ONNX export and the module engines all
        start from it. A fallback linear whose input was smoothed (smoothquant.smooth_runtime) stays an nn.Linear
        with the scaling of its weight columns undone."""
        qmodel = copy.deepcopy(model).eval()
        obs = self.observers()
        params = dict(self._require_graph().named_parameters())
        with torch.no_grad():
            for name, p in qmodel.named_parameters():
                if name in params:
                    p.copy_(params[name])
            for point in self.points:
                mul = obs[observer_key(point.name, "input")].channel_mul
                if point.name in self.fallback_layers and point.kind == "linear" and mul.numel():
                    qmodel.get_submodule(point.name).weight.mul_(mul)
        extra = extra_matmul(self.quantized_points())
        if extra:
            raise UserError(f"int8 attention is not supported for model type {_model_type(model)!r}: {extra}; "
                            "rerun with --int8-attention off")
        attention: dict[str, dict] = {}  # attention module -> operand -> qparams
        for point in self.quantized_points():
            parent_name, _, attr = point.name.rpartition(".")
            if point.kind == "matmul":
                for role, operand in zip(point.roles, MATMUL_OPERANDS[attr]):
                    o = obs[observer_key(point.name, role)]
                    attention.setdefault(parent_name, {})[operand] = (*_frozen_qparams(o), (o.spec.qmin, o.spec.qmax))
                continue
            if point.kind != "linear":
                raise NotImplementedError(f"conversion of {point.kind} quantization is not supported ({point.name})")
            parent = qmodel.get_submodule(parent_name) if parent_name else qmodel
            linear = getattr(parent, attr)
            act, w = obs[observer_key(point.name, "input")], obs[observer_key(point.name, "weight")]
            if act.spec.ch_axis is not None:
                raise NotImplementedError(f"conversion of per-channel activations is not supported ({point.name})")
            w_qparams = _frozen_qparams(w)
            weight = linear.weight.detach()
            if (w.spec.qmin, w.spec.qmax) != w.spec.storage_range:  # narrower grid: snap onto it (QuantLinear doc)
                weight = fake_quantize(weight, *w_qparams, w.spec.ch_axis, w.spec.qmin, w.spec.qmax)
            setattr(parent, attr, QuantLinear(weight, linear.bias, _frozen_qparams(act), (act.spec.qmin, act.spec.qmax),
                                              w_qparams, w.spec.storage_range, w.spec.ch_axis is not None,
                                              act.channel_mul))
        if attention and not attach_attention(qmodel, attention):
            raise UserError(f"int8 attention is not supported for model type {_model_type(model)!r}: "
                            f"{NOT_VIA_INTERFACE}; rerun with --int8-attention off")
        return qmodel.eval()

    def attention_obstacle(self, model: torch.nn.Module) -> str:
        """Why convert() cannot quantize this model's attention matmuls; empty when it can."""
        return attention_obstacle(self.points, model)

    def amp(self, batches: Iterable[dict]) -> dict[str, float]:
        """Per-point sensitivity: relative logit error with only that point quantized (torch-quant's amp)."""
        self.quantize()
        graph = self._require_graph()
        batches = list(batches)
        obs = self.observers()
        saved = {k: o.fake_quant for k, o in obs.items()}
        for o in obs.values():
            o.fake_quant = False
        with torch.no_grad():
            ref = [_logits(graph(**b)) for b in batches]
            scores = {}
            for p in self.points:
                for role in p.roles:
                    obs[observer_key(p.name, role)].fake_quant = True
                err = sum(float((_logits(graph(**b)) - r).pow(2).sum()) for b, r in zip(batches, ref))
                norm = sum(float(r.pow(2).sum()) for r in ref) or 1.0
                scores[p.name] = err / norm
                for role in p.roles:
                    obs[observer_key(p.name, role)].fake_quant = False
        for k, o in obs.items():
            o.fake_quant = saved[k]
        return dict(sorted(scores.items(), key=lambda kv: -kv[1]))

    def fallback(self, sensitivity: dict[str, float], n: int) -> list[str]:
        """Leave the n most sensitive points in fp32."""
        self.fallback_layers = sorted(sensitivity, key=lambda k: -sensitivity[k])[:n]
        self._apply_fallback()
        return self.fallback_layers

    def qat(self) -> torch.fx.GraphModule:
        """Swap frozen observers for LSQ quantizers (learnable scales); the graph's weights stay trainable."""
        graph = self.quantize()
        obs = self.observers()
        for key, o in list(obs.items()):
            if o.fake_quant:
                obs[key] = LSQQuantizer.from_observer(o)
        self.state, self.carries_weights = TRAINING, True
        return graph

    def end_qat(self) -> None:
        """Write learned LSQ scales back into frozen observers so export sees plain fake-quant ops."""
        if self.state != TRAINING:
            return
        obs = self.observers()
        for key, o in list(obs.items()):
            if isinstance(o, LSQQuantizer):
                obs[key] = o.to_observer()
        self.state = QUANTIZED

    # --- helpers -----------------------------------------------------------------------------------------
    def observers(self) -> torch.nn.ModuleDict:
        return getattr(self._require_graph(), OBSERVERS_ATTR)

    def qparams(self, point: str, role: str) -> tuple[torch.Tensor, torch.Tensor]:
        o = self.observers()[observer_key(point, role)]
        return o.scale.detach().clone(), o.zero_point.detach().clone()

    def quantized_points(self) -> list[QuantPoint]:
        return [p for p in self.points if p.name not in self.fallback_layers]

    def _apply_fallback(self) -> None:
        obs = self.observers()
        for p in self.points:
            on = p.name not in self.fallback_layers
            for role in p.roles:
                o = obs[observer_key(p.name, role)]
                if on and not o.fake_quant:
                    o.freeze()
                o.fake_quant = on

    def _check_observed(self) -> None:
        missing = [k for k, o in self.observers().items() if not bool(o.has_stats)]
        if missing:
            raise UserError(f"{len(missing)} observer(s) were never fed (layer not reached by calibration), e.g. {missing[0]}")

    def _require_graph(self) -> torch.fx.GraphModule:
        if self.graph is None:
            raise UserError("no calibration state: run calib() and calibration batches, or load a saved state")
        return self.graph

    # --- state I/O (no pickle) ---------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """qparams/observer statistics as safetensors, config and points as JSON. The directory is replaced as a
        whole (artifacts.atomic_dir): an interrupted save leaves the previous state, never a mix of old and new files."""
        out = Path(directory)
        out.parent.mkdir(parents=True, exist_ok=True)
        self.end_qat()
        tensors = {f"{k}.{b}": t.detach().contiguous().clone() for k, o in self.observers().items() for b, t in o.state_dict().items()}
        with artifacts.atomic_dir(out) as tmp:
            with artifacts.atomic_path(tmp / "observers.safetensors") as path:  # a full disk is a UserError
                save_file(tensors, str(path))
            if self.carries_weights:  # QAT or SmoothQuant changed the weights: they are part of the state
                weights = {n: p.detach().contiguous().clone() for n, p in self.graph.named_parameters()}
                with artifacts.atomic_path(tmp / "weights.safetensors") as path:
                    save_file(weights, str(path))
            meta = {
                "version": STATE_VERSION,
                "config": self.config.to_dict(),
                "points": [{"name": p.name, "kind": p.kind, "nodes": list(p.nodes)} for p in self.points],
                "fallback": self.fallback_layers,
                "weights_changed": self.carries_weights,
            }
            artifacts.write_json(tmp / "quant_state.json", meta)

    @classmethod
    def load(cls, directory: str | Path, model: torch.nn.Module, input_names: tuple[str, ...] | None = None) -> "Quantizer":
        """Rebuild the observed graph for `model` (taking `input_names`) and restore every observer's state."""
        d = Path(directory)
        try:
            meta = json.loads((d / "quant_state.json").read_text(encoding="utf-8"))
            tensors = load_file(str(d / "observers.safetensors"))
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read quantization state in {d}: {e}; rerun calib.py") from None
        if meta.get("version") != STATE_VERSION:
            raise UserError(f"quantization state in {d} has version {meta.get('version')}, expected {STATE_VERSION}; rerun calib.py")
        q = cls(config=QuantConfig.from_dict(meta["config"]))
        q.calib(model, input_names, weights_changed=bool(meta.get("weights_changed")))
        calls = [(p.name, len(p.nodes)) for p in q.points]  # observer keys, and how many calls feed each
        if calls != [(p["name"], len(p["nodes"])) for p in meta["points"]]:
            raise UserError(f"quantization state in {d} was made for a different model or config; rerun calib.py")
        for key, obs in q.observers().items():
            obs.load_state_dict({b[len(key) + 1 :]: t for b, t in tensors.items() if b.startswith(key + ".")})
        q.fallback_layers = list(meta.get("fallback", []))
        if meta.get("weights_changed"):
            try:
                weights = load_file(str(d / "weights.safetensors"))
            except (OSError, ValueError) as e:
                raise UserError(f"cannot read QAT weights in {d}: {e}; rerun calib.py") from None
            params = dict(q.graph.named_parameters())
            with torch.no_grad():
                for name, t in weights.items():
                    params[name].copy_(t)
        q.quantize()
        return q


def _model_type(model: torch.nn.Module) -> str:
    return getattr(getattr(model, "config", None), "model_type", type(model).__name__)


def _frozen_qparams(obs: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero_point) an observer fake-quantizes with now: an LSQ's learned ones, else the frozen (or, if
    its statistics changed since, freshly computed) qparams."""
    if isinstance(obs, LSQQuantizer):
        return obs.export_qparams()
    return (obs.scale, obs.zero_point) if bool(obs.qparams_valid) else obs.compute_qparams()


def _logits(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


def run_calibration(calib_model: torch.fx.GraphModule, batches: Iterable[dict], total: int | None = None) -> int:
    """Feed calibration batches through the observing graph; returns how many were fed."""
    from tqdm import tqdm

    n = 0
    with torch.no_grad():
        for batch in tqdm(batches, total=total, desc="calibrating", unit="batch", leave=False):
            try:
                calib_model(**batch)
            except NonFiniteInput as e:
                raise UserError(f"calibration batch {n + 1}: {e}; the model produces non-finite activations there, "
                                "check the checkpoint") from None
            n += 1
    return n
