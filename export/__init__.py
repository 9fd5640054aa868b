"""Export side of clipsearch: turns a CLIP ViT-B/32 checkpoint into the model folder the
runtime reads (two int8 ONNX graphs, tokenizer.json, manifest.json).

This package may use torch, transformers and onnx; `clipsearch/` never imports it.
"""
