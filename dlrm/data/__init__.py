"""NVIDIA's split-binary dataset format: spec, reader, synthetic generator."""
