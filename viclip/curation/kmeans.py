"""faiss's spherical k-means and nearest-centroid search for SemDeDup, in a process of their own.

faiss calls BLAS (``sgemm_``) through the dynamic linker's global scope, so a BLAS library that another
part of the process loaded globally takes the place of faiss's own: seen here, NVIDIA's nvblas, mapped
into a test process by a Ray GPU-aware actor run, made k-means call a null pointer and killed the process.
:class:`FaissProcess` runs both calls in one spawned process that imports only numpy and faiss, so the
clusters do not depend on what the caller had loaded. This module imports neither torch nor faiss itself.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np
from typing_extensions import Self


def spherical_kmeans(sample: np.ndarray, k: int, iterations: int, seed: int, max_points: int) -> np.ndarray:
    """Centroids ``[k, D]`` (unit length) of faiss's spherical k-means on ``sample``."""
    import faiss

    kmeans = faiss.Kmeans(sample.shape[1], k, niter=iterations, seed=seed, spherical=True,
                          max_points_per_centroid=max_points, min_points_per_centroid=1)
    kmeans.train(np.ascontiguousarray(sample, dtype=np.float32))
    return kmeans.centroids


def nearest_centroids(vectors: np.ndarray, centroids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(inner products, centroid numbers) ``[N, n]`` of each row's ``n`` nearest centroids, best first."""
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return index.search(np.ascontiguousarray(vectors, dtype=np.float32), n)


class FaissProcess:
    """One spawned process for the faiss calls of a run (its start, about a second, is paid once)."""

    def __enter__(self) -> Self:
        self.pool = ProcessPoolExecutor(1, get_context("spawn"))
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown()

    def kmeans(self, sample: np.ndarray, k: int, iterations: int, seed: int, max_points: int) -> np.ndarray:
        return self.pool.submit(spherical_kmeans, sample, k, iterations, seed, max_points).result()

    def nearest(self, vectors: np.ndarray, centroids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self.pool.submit(nearest_centroids, vectors, centroids, n).result()
