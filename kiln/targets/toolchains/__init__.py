"""External toolchains the targets drive (gcc for the cpu target)."""
