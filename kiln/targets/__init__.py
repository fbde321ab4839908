"""Targets: toolchains, builds, runs, caches and cost models."""
