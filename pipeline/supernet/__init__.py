"""Elastic super-networks: the search space and sub-network configs (plain data), the elastic model that
activates and extracts sub-networks in place, and the analytic cost model."""
