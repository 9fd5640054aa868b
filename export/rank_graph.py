"""Writes clipsearch/search/rank.onnx, the integer-GEMM graph the runtime ranks with:
dots[1, n] = (query[1, dim] - query_zero) x block[dim, n], uint8 x int8 -> int32, and
rank_constant.onnx, the same product with `block` a constant initializer (a [dim, 1]
placeholder the server replaces by each stored block through the session options, so
onnxruntime packs it once: `search/rank.PrepackedScorer`).
The runtime ships the file (it has no onnx package); `tests/test_export.py` checks that it
is what this script writes.

    python -m export.rank_graph
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

TARGET = Path(__file__).resolve().parent.parent / "clipsearch" / "search" / "rank.onnx"
CONSTANT_TARGET = TARGET.with_name("rank_constant.onnx")


def build(constant: bool = False) -> bytes:
    block = helper.make_tensor_value_info("block", TensorProto.INT8, ["dim", "n"])
    inputs = [helper.make_tensor_value_info("query", TensorProto.UINT8, [1, "dim"]),
              helper.make_tensor_value_info("query_zero", TensorProto.UINT8, [])]
    placeholder = [numpy_helper.from_array(np.zeros((512, 1), dtype=np.int8), "block")] if constant else []
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["query", "block", "query_zero"], ["dots"])], "rank",
        inputs[:1] + ([] if constant else [block]) + inputs[1:],
        [helper.make_tensor_value_info("dots", TensorProto.INT32, [1, "n"])], placeholder)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="clipsearch")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


if __name__ == "__main__":
    TARGET.write_bytes(build())
    CONSTANT_TARGET.write_bytes(build(constant=True))
    print(TARGET, CONSTANT_TARGET)
