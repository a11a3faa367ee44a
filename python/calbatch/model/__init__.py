"""Training: the Keras networks, the training windows, training and tuning, and the export to ONNX.
The only stage that imports TensorFlow."""
