"""Training through the HF ``Trainer``: the shared parts, and one module per training task."""
