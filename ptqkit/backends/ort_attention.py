"""ONNX Runtime lowering: each float attention block of an exported encoder becomes one com.microsoft
MultiHeadAttention node, so ONNX Runtime runs Q.K^T, scale, mask, softmax and P.V in one kernel instead of a chain
of Reshape, Transpose, MatMul, Mul, Add, Softmax and MatMul nodes with their shape arithmetic.

The exporter writes transformers' eager attention as

    q, k, v = projections (B, S, H)    each -> Reshape (B, S, N, D) -> Transpose
    scores = MatMul(q (B, N, S, D), k^T (B, N, D, S)) * scale + mask (B, 1, S, S)
    context = MatMul(Softmax(scores), v (B, N, S, D)) -> Transpose (B, S, N, D) -> Reshape (B, S, H)

and the rewrite matches exactly that chain (and the same chain without the scale Mul, or with a Div), reading
N and D from the constant of the Reshape's target shape and the scale from its constant. Anything else (int8
attention, whose MatMuls take DequantizeLinear outputs; other layouts) is left as it is. The float arithmetic
is the same (MultiHeadAttention adds the mask as `attention_bias`); only the order of float operations
changes. torch-free: runtime.py (predict.py) applies it too.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

MS_DOMAIN = "com.microsoft"


class _Graph:
    """Producers, consumers and constant values of a graph, for matching chains of nodes."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.inits = {t.name: t for t in graph.initializer}
        self.outputs = {o.name for o in graph.output}

    def node(self, tensor: str, op: str):
        """The producer of `tensor` when it is an `op` node, else None."""
        n = self.producer.get(tensor)
        return n if n is not None and n.op_type == op else None

    def only_consumer(self, tensor: str, op: str):
        users = self.consumers.get(tensor, [])
        return users[0] if len(users) == 1 and users[0].op_type == op and tensor not in self.outputs else None

    def constant(self, tensor: str) -> np.ndarray | None:
        if tensor in self.inits:
            return numpy_helper.to_array(self.inits[tensor])
        n = self.node(tensor, "Constant")
        if n is None:
            return None
        value = next((a for a in n.attribute if a.name == "value"), None)
        return None if value is None else numpy_helper.to_array(value.t)


def _perm(node) -> tuple[int, ...] | None:
    attr = next((a for a in node.attribute if a.name == "perm"), None)
    return tuple(attr.ints) if attr is not None else None


def _heads(g: _Graph, tensor: str, perm: tuple[int, ...]) -> tuple[str, int, int] | None:
    """`tensor` = Transpose(perm)(Reshape(x, [B, S, N, D])): (x, N, D). N and D are the constant tail of the
    target shape; N may be -1 there (inferred), then it is the projection's width over D."""
    t = g.node(tensor, "Transpose")
    r = g.node(t.input[0], "Reshape") if t is not None and _perm(t) == perm else None
    if r is None:
        return None
    tail = _constant_tail(g, r.input[1])
    if len(tail) < 2:
        return None
    heads, size = tail[-2:]
    width = _width(g, r.input[0])
    if heads <= 0 and width:
        heads = width // size
    return (r.input[0], heads, size) if heads > 0 and size > 0 and (not width or heads * size == width) else None


def _constant_tail(g: _Graph, shape: str) -> list[int]:
    """The constant trailing entries of a shape tensor: all of a constant, or those of a Concat's last constant
    parts."""
    concat = g.node(shape, "Concat")
    parts = list(concat.input) if concat is not None else [shape]
    tail: list[int] = []
    for part in reversed(parts):
        value = g.constant(part)
        if value is None:
            break
        tail = [int(d) for d in value.reshape(-1)] + tail
    return tail


def _width(g: _Graph, tensor: str) -> int | None:
    """The last dimension of a projection output, from the constant of its bias Add."""
    n = g.node(tensor, "Add")
    values = [g.constant(i) for i in n.input] if n is not None else []
    return next((int(v.shape[0]) for v in values if v is not None and v.ndim == 1), None)


def _scores(g: _Graph, tensor: str) -> tuple[object, float] | None:
    """`tensor` = MatMul(q, k^T), optionally times or over a scalar constant: the MatMul and the scale."""
    matmul = g.node(tensor, "MatMul")
    if matmul is not None:
        return matmul, 1.0
    for op in ("Mul", "Div"):
        n = g.node(tensor, op)
        matmul = g.node(n.input[0], "MatMul") if n is not None else None
        value = g.constant(n.input[1]) if matmul is not None else None
        if value is not None and value.size == 1:
            c = float(value.reshape(()))
            return matmul, c if op == "Mul" else 1.0 / c
    return None


def _match(g: _Graph, softmax, ranks: dict[str, int]) -> dict | None:
    """The attention block around one Softmax, or None when it is not the exported eager chain with a 4-D
    additive mask (MultiHeadAttention's attention_bias: batch or 1, heads or 1, S, S)."""
    add = g.node(softmax.input[0], "Add")
    if add is None or any(a.name == "axis" and a.i not in (-1, 3) for a in softmax.attribute):
        return None
    for scores, mask in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
        found = _scores(g, scores)
        if found is not None and ranks.get(mask) == 4:
            break
    else:
        return None
    matmul, scale = found
    pv = g.only_consumer(softmax.output[0], "MatMul")
    out_t = g.only_consumer(pv.output[0], "Transpose") if pv is not None and pv.input[0] == softmax.output[0] else None
    out = g.only_consumer(out_t.output[0], "Reshape") if out_t is not None and _perm(out_t) == (0, 2, 1, 3) else None
    if out is None:
        return None
    q, k, v = (_heads(g, matmul.input[0], (0, 2, 1, 3)), _heads(g, matmul.input[1], (0, 2, 3, 1)),
               _heads(g, pv.input[1], (0, 2, 1, 3)))
    if q is None or k is None or v is None or len({q[1:], k[1:], v[1:]}) != 1:
        return None
    return {"q": q[0], "k": k[0], "v": v[0], "mask": mask, "out": out.output[0], "heads": q[1], "scale": scale,
            "name": softmax.name}


def to_multihead_attention(model: onnx.ModelProto) -> int:
    """Rewrite every matching attention block in place; returns how many. Nodes only the old chains used are
    removed (the shape arithmetic shared with other nodes stays)."""
    inferred = onnx.shape_inference.infer_shapes(model).graph
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*inferred.value_info, *inferred.input]
             if v.type.tensor_type.HasField("shape")}
    g = _Graph(model.graph)
    blocks = [b for s in model.graph.node if s.op_type == "Softmax" and (b := _match(g, s, ranks)) is not None]
    if not blocks:
        return 0
    fused = [helper.make_node("MultiHeadAttention", [b["q"], b["k"], b["v"], "", "", b["mask"]], [b["out"]],
                              name=f"{b['name']}/MultiHeadAttention", domain=MS_DOMAIN, num_heads=b["heads"],
                              scale=b["scale"]) for b in blocks]
    replaced = {b["out"] for b in blocks}
    nodes = [n for n in model.graph.node if not set(n.output) & replaced] + fused
    model.graph.ClearField("node")
    model.graph.node.extend(_topological(_live(nodes, {o.name for o in model.graph.output})))
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return len(blocks)


def _live(nodes: list, outputs: set[str]) -> list:
    """The nodes that some graph output depends on."""
    producer = {o: n for n in nodes for o in n.output}
    needed, stack, keep = set(), list(outputs), set()
    while stack:
        t = stack.pop()
        if t in needed or t not in producer:
            continue
        needed.add(t)
        n = producer[t]
        if id(n) not in keep:
            keep.add(id(n))
            stack.extend(i for i in n.input if i)
    return [n for n in nodes if id(n) in keep]


def _topological(nodes: list) -> list:
    """Nodes ordered so that each comes after the producers of its inputs (ONNX requires it)."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    order, state = [], [0] * len(nodes)  # 0 new, 1 visiting, 2 done
    for start in range(len(nodes)):
        stack = [(start, False)]
        while stack:
            i, expanded = stack.pop()
            if expanded:
                state[i] = 2
                order.append(nodes[i])
                continue
            if state[i]:
                continue
            state[i] = 1
            stack.append((i, True))
            stack.extend((producer[t], False) for t in nodes[i].input if t in producer and not state[producer[t]])
    return order
