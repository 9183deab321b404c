"""Array math on any array-API namespace (numpy, CuPy, array-api-strict): the backend, kernels,
faiss, k-means, filters over columns, BM25 and TurboQuant codes."""
