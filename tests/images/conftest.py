"""The image tests render the chart too: helm comes from the chart tests' session fixtures."""

from tests.charts.conftest import helm, render, tools  # noqa: F401  (pytest fixtures)
