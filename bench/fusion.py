"""Does onnxruntime's transformer optimizer (Attention/LayerNorm/QuickGelu fusion) help the
int8 vision tower? Quantizes the fp32 graph with and without fusing first, same settings as
the export, and times both in the same run (batch 16, 2 threads, median of 5, twice).

    python bench/fusion.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import tempfile  # noqa: E402
import time

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers import optimizer

from bench.common import full_model  # noqa: E402

src=str(full_model(int8=False) / "vision.onnx")
tmp=tempfile.mkdtemp()
m=optimizer.optimize_model(src, model_type="clip", num_heads=12, hidden_size=768, opt_level=1)
print("fused:", {k:v for k,v in m.get_fused_operator_statistics().items() if v})
m.save_model_to_file(tmp+"/fused.onnx")
x=np.random.default_rng(0).normal(size=(16,3,224,224)).astype(np.float32)
so=ort.SessionOptions(); so.intra_op_num_threads=2
ref=ort.InferenceSession(src, so).run(None,{"pixel_values":x})[0]
for name, path in (("plain",tmp+"/plain_q.onnx"),("fused",tmp+"/fused_q.onnx")):
    quantize_dynamic(src if name=="plain" else tmp+"/fused.onnx", path, op_types_to_quantize=["MatMul","Gemm","Gather"], per_channel=True, reduce_range=True, weight_type=QuantType.QInt8, extra_options={"MatMulConstBOnly":True})
for rep in range(2):
  for name, path in (("plain",tmp+"/plain_q.onnx"),("fused",tmp+"/fused_q.onnx")):
    s=ort.InferenceSession(path,so); y=s.run(None,{"pixel_values":x})[0]
    ts=[]
    for i in range(5):
        t=time.perf_counter(); s.run(None,{"pixel_values":x}); ts.append(time.perf_counter()-t)
    cos=np.sum(y*ref,1)/np.linalg.norm(y,axis=1)/np.linalg.norm(ref,axis=1)
    print(name, "img/s %.1f"%(16/np.median(ts)), "cos min %.6f"%cos.min(), flush=True)
