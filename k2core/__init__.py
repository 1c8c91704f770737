"""k2core: the library behind k2. All logic lives here; it never imports prefect."""
__version__ = "0.1.0"
