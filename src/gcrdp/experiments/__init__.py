"""Runs over shots × seeds × methods, their results files and tables."""

from .config import RunConfig
from .runner import run_experiment, summarize
from .table import format_instance_table, format_table

__all__ = ["RunConfig", "run_experiment", "summarize", "format_table", "format_instance_table"]
