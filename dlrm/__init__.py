"""DLRM training for Kubernetes GPU clusters: split-binary Criteo data, hybrid parallelism."""

__version__ = "0.1.0"
