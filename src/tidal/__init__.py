"""tidal: a tabular use case from raw data to a running, monitored, self-updating service."""

__version__ = "0.1.0"
