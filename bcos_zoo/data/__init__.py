"""Data: image datasets as ``(PIL image, label)`` pairs, and the one preprocessing path from a PIL image to pixels."""
