"""Channel (structured) pruning: the channel graph, ranking criteria, surgery, and the round-by-round search."""
