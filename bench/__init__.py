"""Side-by-side benchmarks: see README.md in this folder."""
