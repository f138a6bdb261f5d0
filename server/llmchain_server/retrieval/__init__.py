"""Retrieval: documents chunked, embedded and indexed once per corpus (`llmchain index build`),
and searched by chains' retrieval steps (dense, BM25 or hybrid)."""
