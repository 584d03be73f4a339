"""Evidence benchmark: does hard batching train better on real data?

See ``benchmarks/evidence.py`` (the one command) and its README section.
"""
