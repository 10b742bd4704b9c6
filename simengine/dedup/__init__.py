"""Duplicates: exact copies by content hash and near duplicates (resized, recompressed, cropped, edited copies of one
picture) by search, in groups that never chain unrelated images. Work in progress (issue 17): generated copies and
the grouping, the pair search and the same-picture threshold so far."""
