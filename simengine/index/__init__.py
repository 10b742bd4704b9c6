"""Storage: FAISS segments + SQLite rows + versioned manifests in one self-contained directory.

store (layout, versions), lock (one writer), writer (commits), reader (snapshots), build / update (the operations
with a model), verify (read-only checks). Nothing here imports torch.
"""
