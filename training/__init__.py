"""Data synthesis, trainers, evaluation, export and Job entry points for the three networks."""
