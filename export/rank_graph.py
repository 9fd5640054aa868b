"""Writes clipsearch/search/rank.onnx, the integer-GEMM graph the runtime ranks with:
dots[n, 1] = (block[n, dim] - block_zero) x query[dim, 1], uint8 x int8 -> int32: the stored
block is the left operand, which onnxruntime streams, and the query the right one, the only
operand it packs (`cache/packed.py`, `search/rank.IntegerScorer`).
The runtime ships the file (it has no onnx package); `tests/test_export.py` checks that it
is what this script writes.

    python -m export.rank_graph
"""
from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

TARGET = Path(__file__).resolve().parent.parent / "clipsearch" / "search" / "rank.onnx"


def build() -> bytes:
    inputs = [helper.make_tensor_value_info("block", TensorProto.UINT8, ["n", "dim"]),
              helper.make_tensor_value_info("query", TensorProto.INT8, ["dim", 1]),
              helper.make_tensor_value_info("block_zero", TensorProto.UINT8, [])]
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["block", "query", "block_zero"], ["dots"])], "rank", inputs,
        [helper.make_tensor_value_info("dots", TensorProto.INT32, ["n", 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="clipsearch")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


if __name__ == "__main__":
    TARGET.write_bytes(build())
    print(TARGET)
