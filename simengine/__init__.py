"""simengine: image similarity with triplet-trained EfficientNet embeddings, FAISS and SQLite."""

__version__ = "0.1.0"
