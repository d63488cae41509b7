"""Credit scoring: CatBoost training, ONNX export, the model registry and server (issue 5)."""
