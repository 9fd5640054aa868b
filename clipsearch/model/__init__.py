"""The model: its folder (manifest), running its towers (encoders, tokens), and getting one
without PyTorch (catalogue, hub, layouts, build, pull, known answers). The runtime three
(manifest, encoders, tokens) never import the pulling side, which needs onnx."""
