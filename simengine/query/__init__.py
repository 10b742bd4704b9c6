"""The query layer: the `Engine` that answers pair, triplet and neighbour questions, and its answers."""
