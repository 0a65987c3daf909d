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


@dataclass(frozen=True)
class QuantPoint:
    """One quantizable op, named after the module it lives in (e.g. 'bert.encoder.layer.0.attention.self.query').

    kind 'linear': observers on 'input' (activation) and 'weight'; kind 'matmul' (attention Q*K^T named
    '<attention module>.qk', P*V named '<attention module>.pv'): observers on 'input' and 'other'.
    """

    name: str
    kind: str
    node: str  # fx node name in the captured graph

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


def find_quant_points(gm: fx.GraphModule, cfg: QuantConfig) -> list[QuantPoint]:
    """Every linear (and, with cfg.attention_matmuls, the two attention matmuls) not excluded by cfg.exclude."""
    points: list[QuantPoint] = []
    matmul_count: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target is torch.ops.aten.linear.default:
            points.append(QuantPoint(_module_path(node), "linear", node.name))
        elif node.target is torch.ops.aten.matmul.default and cfg.attention_matmuls:
            module = _module_path(node)
            i = matmul_count.get(module, 0)
            matmul_count[module] = i + 1
            points.append(QuantPoint(f"{module}.{('qk', 'pv')[i] if i < 2 else f'matmul{i}'}", "matmul", node.name))
    return [p for p in points if not is_excluded(p, cfg.exclude)]


def is_excluded(point: QuantPoint, patterns: tuple[str, ...]) -> bool:
    """Patterns match the point name (fnmatch) or its op type ('linear', 'matmul')."""
    return any(pat == point.kind or fnmatch.fnmatchcase(point.name, pat) for pat in patterns)


def insert_observers(gm: fx.GraphModule, points: list[QuantPoint], cfg: QuantConfig) -> torch.nn.ModuleDict:
    """Put an observer on each quantized input of each point; weights are observed once, right here."""
    observers = torch.nn.ModuleDict()
    gm.add_module(OBSERVERS_ATTR, observers)
    nodes = {n.name: n for n in gm.graph.nodes}
    for p in points:
        node = nodes[p.node]
        for role, arg_index in zip(p.roles, (0, 1)):
            obs = Observer(p.spec(role, cfg))
            obs.name = f"{p.name}:{role}"
            key = observer_key(p.name, role)
            observers[key] = obs
            src = node.args[arg_index]
            with gm.graph.inserting_before(node):
                wrapped = gm.graph.call_module(f"{OBSERVERS_ATTR}.{key}", (src,))
            node.replace_input_with(src, wrapped)
            if role == "weight":
                obs(_get_attr(gm, src).detach())
                obs.observing = False
    gm.graph.lint()
    gm.recompile()
    return observers


def _get_attr(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    if node.op != "get_attr":
        raise ValueError(f"weight of {node.name} is not a parameter of the graph")
    obj = gm
    for part in node.target.split("."):
        obj = getattr(obj, part)
    return obj
