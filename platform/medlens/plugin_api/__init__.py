"""Versioned plugin contracts; plugins import ``medlens.plugin_api.v1``."""
