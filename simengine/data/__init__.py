"""Getting images in: the one `Item` description, folder scanning, decoding, Imagenette, evaluation sets and CSV."""
