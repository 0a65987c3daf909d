"""Graph passes on the captured torch.export graph: find quantizable ops, insert observers around them."""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

import torch
from torch import fx

from .config import ATTENTION_OPERAND_SPEC, ATTENTION_PROBS_SPEC, QuantConfig, QuantSpec
from .observers import Observer

OBSERVERS_ATTR = "ptq_observers"
MATMUL_NAMES = ("qk", "pv")  # the attention matmuls of one call, in order: Q*K^T, P*V


@dataclass(frozen=True)
class QuantPoint:
    """One quantizable op, named after the module it lives in (e.g. 'bert.encoder.layer.0.attention.self.query').

    kind 'linear': observers on 'input' (activation) and 'weight'; kind 'matmul' (attention Q*K^T named
    '<attention module>.qk', P*V named '<attention module>.pv'): observers on 'input' and 'other'.
    nodes: the fx nodes of every call of the op. A module shared across depth (ALBERT's one layer, run once per
    layer) is called several times; all its calls share one point, so one observer sees every call and its range
    covers them all: the converted model holds one set of qparams per module (QuantLinear, QuantAttention).
    """

    name: str
    kind: str
    nodes: tuple[str, ...]  # fx node names in the captured graph, one per call, in graph order

    @property
    def roles(self) -> tuple[str, str]:
        return ("input", "weight") if self.kind == "linear" else ("input", "other")

    def spec(self, role: str, cfg: QuantConfig) -> QuantSpec:
        """The grid of one operand: the contract's for a linear; the attention grids (config.py) for a matmul,
        whose P*V input is the softmax output."""
        if self.kind == "linear":
            return cfg.weight if role == "weight" else cfg.activation
        return ATTENTION_PROBS_SPEC if self.name.endswith(".pv") and role == "input" else ATTENTION_OPERAND_SPEC


def observer_key(point: str, role: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]", "_", point) + "__" + role


def _module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return node.name
    path = list(stack.values())[-1][0]
    # torch.export prefixes nested module paths like "L['self'].bert..." in some modes; keep the dotted path
    return re.sub(r"^L\['self'\]\.?", "", path)


def _module_call(node: fx.Node) -> str:
    """Which call of its innermost module the node belongs to: torch.export keys the module stack per call
    ('...attention', then '...attention@1' when the same module runs again)."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack)[-1] if stack else node.name


def find_quant_points(gm: fx.GraphModule, cfg: QuantConfig) -> list[QuantPoint]:
    """Every linear (and, with cfg.attention_matmuls, the attention matmuls) not excluded by cfg.exclude, in graph
    order. Matmuls are numbered within one call of their module (Q*K^T, P*V, then 'matmul2'... in a module that
    runs more per call); repeated calls of a module join the point of its first call."""
    points: dict[str, QuantPoint] = {}
    matmuls_in_call: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target is torch.ops.aten.linear.default:
            name, kind = _module_path(node), "linear"
        elif node.target is torch.ops.aten.matmul.default and cfg.attention_matmuls:
            call = _module_call(node)
            i = matmuls_in_call.get(call, 0)
            matmuls_in_call[call] = i + 1
            name, kind = f"{_module_path(node)}.{MATMUL_NAMES[i] if i < len(MATMUL_NAMES) else f'matmul{i}'}", "matmul"
        else:
            continue
        earlier = points[name].nodes if name in points else ()
        points[name] = QuantPoint(name, kind, earlier + (node.name,))
    return [p for p in points.values() if not is_excluded(p, cfg.exclude)]


def is_excluded(point: QuantPoint, patterns: tuple[str, ...]) -> bool:
    """Patterns match the point name (fnmatch) or its op type ('linear', 'matmul')."""
    return any(pat == point.kind or fnmatch.fnmatchcase(point.name, pat) for pat in patterns)


def insert_observers(gm: fx.GraphModule, points: list[QuantPoint], cfg: QuantConfig) -> torch.nn.ModuleDict:
    """Put an observer on each quantized input of each point, fed by every call of the point; weights (one
    parameter for every call) are observed once, right here."""
    observers = torch.nn.ModuleDict()
    gm.add_module(OBSERVERS_ATTR, observers)
    nodes = {n.name: n for n in gm.graph.nodes}
    for p in points:
        for role, arg_index in zip(p.roles, (0, 1)):
            obs = Observer(p.spec(role, cfg))
            obs.name = f"{p.name}:{role}"
            key = observer_key(p.name, role)
            observers[key] = obs
            for node in (nodes[n] for n in p.nodes):
                src = node.args[arg_index]
                with gm.graph.inserting_before(node):
                    wrapped = gm.graph.call_module(f"{OBSERVERS_ATTR}.{key}", (src,))
                node.replace_input_with(src, wrapped)
            if role == "weight":
                obs(linear_weight(gm, p).detach())
                obs.observing = False
    gm.graph.lint()
    gm.recompile()
    return observers


def linear_weight(gm: fx.GraphModule, point: QuantPoint) -> torch.Tensor:
    """The weight parameter a linear point multiplies, once its observers are in (linear <- weight observer <- param)."""
    node = next(n for n in gm.graph.nodes if n.name == point.nodes[0])
    return _get_attr(gm, node.args[1].args[0])


def _get_attr(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    if node.op != "get_attr":
        raise ValueError(f"weight of {node.name} is not a parameter of the graph")
    obj = gm
    for part in node.target.split("."):
        obj = getattr(obj, part)
    return obj
