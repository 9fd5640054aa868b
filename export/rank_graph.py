"""Writes clipsearch/search/rank.onnx, the integer-GEMM graph the runtime ranks with:
dots[1, n] = (query[1, dim] - query_zero) x block[dim, n], uint8 x int8 -> int32.
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
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["query", "block", "query_zero"], ["dots"])], "rank",
        [helper.make_tensor_value_info("query", TensorProto.UINT8, [1, "dim"]),
         helper.make_tensor_value_info("block", TensorProto.INT8, ["dim", "n"]),
         helper.make_tensor_value_info("query_zero", TensorProto.UINT8, [])],
        [helper.make_tensor_value_info("dots", TensorProto.INT32, [1, "n"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="clipsearch")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


if __name__ == "__main__":
    TARGET.write_bytes(build())
    print(TARGET)
