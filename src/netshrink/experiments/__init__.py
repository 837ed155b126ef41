"""Reproductions of the seed documents' figures and tables, one module per seed (library API only)."""
