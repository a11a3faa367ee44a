"""Where the network runs: ONNX Runtime on the CPU (the default) or an NVIDIA GPU, or TensorRT."""
