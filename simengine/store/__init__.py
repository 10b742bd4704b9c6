"""Storage: a versioned, self-contained vector store that knows nothing of what its vectors mean.

FAISS segments + SQLite rows + versioned manifests in one directory (layout), one writer at a time (lock, writer),
consistent snapshots for readers (reader), segment files and compaction (segments), garbage collection (garbage),
read-only checks of its own files (verify), and the FAISS index types chosen by size and memory budget
(index_choice, faiss_factory). It imports only the standard library, numpy, faiss, SQLite (with sqlite-utils),
filelock and simengine's errors and files modules; `index/` puts models on top of it.
"""
