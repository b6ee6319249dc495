"""The notebook: a small stateful gRPC service with its own .proto (notebook.v1.Notebook)."""
