"""Duplicates: exact copies by content hash, and near duplicates (resized, recompressed, cropped, edited copies of one
picture) found by search and confirmed by a calibrated same-picture decision, in groups that never chain unrelated
images.

    find       the pipeline: `find_duplicates` (a collection, or against another one or an index), `copies_in_index`
    calibrate  the same-picture decision, stored with the model
    layout     a thumbnail's low frequencies;  keypoints  geometric verification;  near  the candidate search
    groups     star groups around a keeper;  report  CSV and HTML;  move  moving duplicates aside
    copies     generated copies, for calibration and the benchmark
"""
