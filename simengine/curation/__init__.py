"""Curation: what an index's embeddings and labels say about its own items. Label errors (items whose label
disagrees with their neighbourhood), outliers (items unlike the rest) and a representative sample. Nothing is changed
or moved: each question is answered as a report (JSON, CSV, or a self-contained HTML page).

The defaults live here, free of numpy, for the command line to show without importing the rest."""

LABEL_NEIGHBOURS = 20  # nearest other pictures that vote on a label (`label_errors`)
OUTLIER_NEIGHBOURS = 50  # the rank of the neighbour whose distance makes an outlier's score (`outliers`)
