# Databricks notebook source
# MAGIC %md
# MAGIC # Ask the assistant
# MAGIC
# MAGIC One turn, exactly as the app and the terminal chat run it: the question is stored in your memory,
# MAGIC earlier conversations are recalled, your documents are searched, and the answer comes back with its
# MAGIC numbered sources and the id of its MLflow trace. Leave `session` empty to start a new conversation;
# MAGIC paste the session id printed below to continue it. On Databricks, set the `lakebase_branch` widget
# MAGIC (`projects/<lakebase_project>/branches/production`) or `lakebase_instance` so the turn is stored in the
# MAGIC deployed memory, not a local one.

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

from context_assistant.assistant import TurnFailed
from context_assistant.core import load_config, workspace_client
from context_assistant.notebook import Widgets, notebook_user
from context_assistant.services import Services
from context_assistant.storage import lakebase_from_widgets

notebook_dbutils = dbutils if "dbutils" in globals() else None  # noqa: F821
widget = Widgets(notebook_dbutils.widgets if notebook_dbutils else None).text
services = Services(lakebase_from_widgets(load_config(), widget))
# Who runs the notebook (their memory is theirs); off Databricks, the configured user.
user = widget(
    "user", notebook_user(notebook_dbutils, services.config.default_user, workspace_client), "User"
).strip()
question = widget("question", "How do I deploy the bundle to production?", "Question")
session = widget("session", "", "Session id (empty: a new conversation)").strip() or None

# COMMAND ----------

try:
    result = services.assistant.turn(user, question, session)
except TurnFailed as failed:
    hint = "try again shortly" if failed.retryable else "trying again will not help until this is fixed"
    print(f"The assistant could not answer ({failed.kind}): {failed}\n{hint}; your question is kept in session")
    print(f"{failed.session_id} (message {failed.user_message_id}).")
    result = None
finally:
    traced = services.tracer.flush()  # the trace is written before the line below is printed (at most a minute)
    tracing = services.tracer.status()
    services.close()

if result is not None:
    print(result.reply)
    print("\nSources:")
    for source in result.sources:
        where = source.path + (f" › {source.heading}" if source.heading else "")
        where += f", page {source.page}" if source.page is not None else ""
        print(f"  [{source.index}] {where}  (score {source.score:.3f})")
    if not result.sources:
        print("  (none: nothing in the documents matched)")
    for warning in result.warnings:
        print(f"Note: {warning}")
    print(f"\nsession: {result.session_id}")
    if result.trace_id and traced:
        print(f"trace: {result.trace_id}")
    else:
        print(f"trace: (not written: tracing is {tracing})")
