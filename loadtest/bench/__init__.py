"""Benchmarks that print figures (`make bench`): the ratios the project is held to (ratios.py), and the
per-network benchmarks behind them. Each runs as `python -m loadtest.bench.<name>`; none asserts anything."""
