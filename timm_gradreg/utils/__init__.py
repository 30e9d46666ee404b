"""Plumbing: atomic files, devices, argument and YAML parsing, progress, plugins, registries, the version."""
