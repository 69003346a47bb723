"""Studies built on the stages: the architecture zoo, the multi-task and pruning comparisons, per-layer
sensitivity, and pictures. They call the stages and the measurement; they measure nothing themselves."""
