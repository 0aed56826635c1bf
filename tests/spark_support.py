"""A session-scoped local Spark (the product's own pysail Spark Connect server) for tests that need Spark.

Tests ask for the ``spark`` fixture; a module makes it available with
``from spark_support import local_spark  # noqa: F401`` (or conftest can import it once for everyone). One
server serves the whole test run and is stopped when the session ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from context_assistant.ingest.spark import start_local_spark, stop_local_spark

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


@pytest.fixture(scope="session", name="spark")
def local_spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    session = start_local_spark(tmp_path_factory.mktemp("spark"))
    yield session
    stop_local_spark()
