"""Searching a super-network: the genome, the multi-objective algorithms (LINAS and pymoo's), the evaluation store,
the search report, statistics, and fake quantization for the cheap estimate."""
