# Databricks notebook source
# MAGIC %md
# MAGIC # Inspect conversation memory
# MAGIC
# MAGIC Who uses the assistant and how: sessions and turns per user, the most recent sessions, and a user's
# MAGIC latest turns. On Databricks it reads the deployed memory: set the `lakebase_branch` widget to the
# MAGIC bundle's branch (`projects/<lakebase_project>/branches/production`), or `lakebase_instance` for a
# MAGIC Provisioned instance; you connect as yourself, so the schema's owner must have granted you access
# MAGIC (`context-assistant db setup --grant-to <you>`). Locally, with both empty, the embedded Postgres.

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
from context_assistant.notebook import Widgets, print_table
from context_assistant.services import Services
from context_assistant.storage import lakebase_from_widgets

widget = Widgets(dbutils.widgets if "dbutils" in globals() else None).text  # noqa: F821


user = widget("user", "", "User (empty: everyone)")
limit = int(widget("limit", "20", "Rows"))
services = Services(lakebase_from_widgets(load_config(), widget))
db = services.db  # on Lakebase: the schema the jobs set up (you need its grants: README, "Deploy")


def query(sql: str, *params) -> list[tuple]:
    with db.connection() as conn:
        return conn.execute(sql, params).fetchall()


# COMMAND ----------

# MAGIC %md ## Sessions and turns per user

# COMMAND ----------

per_user = query(
    """
    SELECT s.user_id, count(DISTINCT s.id) AS sessions, count(c.id) AS turns,
           count(c.id) FILTER (WHERE c.role = 'user') AS questions, max(c.timestamp) AS last_turn
    FROM sessions s LEFT JOIN conversations c ON c.session_id = s.id
    WHERE %s = '' OR s.user_id = %s
    GROUP BY s.user_id ORDER BY last_turn DESC NULLS LAST LIMIT %s
    """,
    user,
    user,
    limit,
)
print_table(per_user, ("user", "sessions", "turns", "questions", "last turn"))

# COMMAND ----------

# MAGIC %md ## Most recent sessions

# COMMAND ----------

recent = query(
    """
    SELECT s.id, s.user_id, s.title, s.updated_at, count(c.id) AS turns,
           count(c.id) FILTER (WHERE c.metadata ->> 'status' = 'failed') AS failed
    FROM sessions s LEFT JOIN conversations c ON c.session_id = s.id
    WHERE %s = '' OR s.user_id = %s
    GROUP BY s.id ORDER BY s.updated_at DESC LIMIT %s
    """,
    user,
    user,
    limit,
)
print_table(recent, ("session", "user", "title", "updated", "turns", "failed"))

# COMMAND ----------

# MAGIC %md ## Latest turns

# COMMAND ----------

turns = query(
    """
    SELECT timestamp, user_id, session_id, role, left(replace(content, E'\\n', ' '), 100)
    FROM conversations WHERE %s = '' OR user_id = %s ORDER BY timestamp DESC, id DESC LIMIT %s
    """,
    user,
    user,
    limit,
)
print_table(turns, ("time", "user", "session", "role", "content"))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Recent traces
# MAGIC Each turn is traced to the MLflow experiment in `tracing.experiment` (the bundle's `traces`
# MAGIC experiment on Databricks); open it in the Experiments UI, or search here.

# COMMAND ----------

tracing = services.config.tracing
try:
    if not tracing.tracking_uri:
        # Locally traces go to a SQLite store in the data folder; browse them with the MLflow UI.
        store_uri = f"sqlite:///{services.config.data_path / 'mlflow.db'}"
        print(f"local traces: mlflow ui --backend-store-uri {store_uri}")
    else:
        import mlflow

        mlflow.set_tracking_uri(tracing.tracking_uri)
        experiment = (
            mlflow.get_experiment(tracing.experiment_id)
            if tracing.experiment_id
            else mlflow.get_experiment_by_name(tracing.experiment)
        )
        if experiment is None:
            print(f"no experiment {tracing.experiment!r} yet: no traces recorded")
        else:
            traces = mlflow.search_traces(experiment_ids=[experiment.experiment_id], max_results=limit)
            print(traces.head(limit).to_string() if len(traces) else "no traces yet")
except Exception as exc:  # tracing is optional: report, never fail the notebook
    print(f"traces unavailable: {exc}")
finally:
    services.close()
