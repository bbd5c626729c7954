"""Thin CLI entry points, one module per pipeline stage, composed by :mod:`stages.cli`."""
