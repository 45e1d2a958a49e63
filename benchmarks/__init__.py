"""asv suite: timing of the vectorized engine against the obvious alternatives, and the
stability results themselves, tracked commit by commit (see the README's "Benchmarks")."""
