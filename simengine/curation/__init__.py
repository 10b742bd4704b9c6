"""Curation: what an index's embeddings and labels say about its own items. Label errors (items whose label
disagrees with their neighbourhood), outliers (items unlike the rest) and a representative sample. Nothing is changed
or moved: each question is answered as a report (JSON, CSV, or a self-contained HTML page)."""
