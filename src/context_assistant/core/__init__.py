"""What every other package may use, and which uses none of them: configuration, time, retries, token
estimates, the error hierarchy, the Databricks workspace client, tracing and console helpers."""
