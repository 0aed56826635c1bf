"""Files → chunks: parse documents, cut them into chunks, and keep the Delta chunk and documents tables in
step with a folder or Volume, with Spark."""
