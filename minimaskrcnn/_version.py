"""The package version, in a module of its own so that `weights_convert` can read it without the package."""
__version__ = "0.1.0"
