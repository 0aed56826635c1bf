"""PostgreSQL: connections and migrations, conversation memory, and the pgvector/BM25 primitives that the
document index and memory recall share."""
