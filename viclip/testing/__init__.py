"""Test and benchmark helpers: videos generated on the spot, nothing downloaded.

``videos`` writes clean constant-rate H.264 whose frames carry their index; ``corpus`` writes
web-shaped sources (long/open GOP, VFR, rotation, SAR, 10-bit, ...) with the clips or the failure
each must give. Only ``tests/`` and ``bench/`` import this package; the pipeline never does.
"""
