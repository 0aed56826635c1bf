# Databricks notebook source
# MAGIC %md
# MAGIC # Explore the chunk table
# MAGIC
# MAGIC What the ingestion job produced: documents by status (ok / failed / skipped) with the reasons, chunk
# MAGIC counts and sizes, and the documents with the most chunks. On Databricks, set the widgets to the
# MAGIC bundle's tables (`<catalog>.<schema>.chunks` / `.documents`); locally the defaults come from
# MAGIC `config.yaml` (the embedded data folder), or from `CA_WIDGET_<NAME>` environment variables.

# COMMAND ----------

# MAGIC %pip install -r ../requirements.txt

# COMMAND ----------

if "dbutils" in globals():  # on Databricks: load the packages just installed (run locally, nothing to do)
    dbutils.library.restartPython()  # noqa: F821

# COMMAND ----------

import os
import sys

# A Databricks notebook has no file path of its own and runs in its own folder: notebooks/ of the deployed bundle (or of
# a checkout, run from there). The package's code is next to it, in ../src.
sys.path.insert(0, os.path.abspath(os.path.join(os.getcwd(), "..", "src")))

from context_assistant.core import load_config
from context_assistant.ingest import ensure_tables, get_spark, resolve_table
from context_assistant.notebook import Widgets

config = load_config()


widget = Widgets(dbutils.widgets if "dbutils" in globals() else None).text  # noqa: F821


def show(frame, rows: int = 50) -> None:
    try:
        display(frame)  # noqa: F821 - Databricks
    except NameError:
        frame.show(rows, truncate=False)


chunk_table = widget("chunk_table", config.rag.chunk_table, "Chunk table")
documents_table = widget("documents_table", config.rag.documents_table, "Documents table")
spark = globals().get("spark") or get_spark(config.data_path)  # Databricks provides one
chunks = resolve_table(chunk_table, local_dir=config.data_path)
documents = resolve_table(documents_table, local_dir=config.data_path)
ensure_tables(spark, chunks, documents)  # registers local tables in this session; a no-op when they exist
print(f"chunks: {chunks.label}\ndocuments: {documents.label}")

# COMMAND ----------

# MAGIC %md ## Documents by status

# COMMAND ----------

by_status = spark.sql(
    f"""
    SELECT status, count(*) AS documents, sum(chunk_count) AS chunks, sum(size_bytes) AS bytes
    FROM {documents.sql_name} GROUP BY status ORDER BY status
    """
)
show(by_status)

# COMMAND ----------

# MAGIC %md ## Failed and skipped documents (why each is missing from answers)

# COMMAND ----------

problems = spark.sql(
    f"""
    SELECT path, status, error, size_bytes, modified_at
    FROM {documents.sql_name} WHERE status <> 'ok' ORDER BY status, path
    """
)
show(problems)

# COMMAND ----------

# MAGIC %md ## Chunk sizes

# COMMAND ----------

sizes = spark.sql(
    f"""
    SELECT count(*) AS chunks, count(DISTINCT path) AS documents,
           min(length(text)) AS min_chars, round(avg(length(text)), 1) AS avg_chars, max(length(text)) AS max_chars,
           sum(CASE WHEN page IS NOT NULL THEN 1 ELSE 0 END) AS chunks_with_page
    FROM {chunks.sql_name}
    """
)
show(sizes)

# COMMAND ----------

# MAGIC %md ## Documents with the most chunks

# COMMAND ----------

largest = spark.sql(
    f"""
    SELECT path, count(*) AS chunks, max(ingested_at) AS last_changed
    FROM {chunks.sql_name} GROUP BY path ORDER BY chunks DESC, path LIMIT 20
    """
)
show(largest)
