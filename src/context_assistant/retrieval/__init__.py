"""Chunks → index → hits: embeddings, the index sync, the pgvector and Vector Search backends, memory recall
and retrieval evaluation."""
