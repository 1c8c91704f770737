


class ExperimentError(ValueError):
    """An experiment cannot run as configured; the message says why."""
