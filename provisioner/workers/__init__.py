"""Background workers that carry out, after commit, what transactions wrote to tables."""
