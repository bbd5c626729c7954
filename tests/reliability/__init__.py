"""Fault-injection and bad-input suite: real ``vrnn`` runs on real files (docs/reliability.md)."""
