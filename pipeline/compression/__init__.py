"""Making models smaller: TF-MOT magnitude pruning, and channel pruning (``channels``)."""
