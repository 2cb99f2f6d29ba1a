"""Generated clip embeddings shaped like real CLIP ones, with planted near duplicates, and embed-clips shards of
them (tests and benchmarks).

Real video embeddings are not uniform on the sphere: clips of one concept crowd round a centre, and all of
them share a common direction. Here each row is ``normalize(shared + centre_c + spread_c * noise)``, which gives
cosines of about 0.2 between concepts and 0.5-0.8 within one, and ``planted`` copies sit at cosines drawn
uniformly from ``[low, 1]`` to their original (exactly: the copy is the original turned by that angle in a
random direction), each copy at a random row far from its original. A search at threshold ``low`` must find
every planted pair; an unplanted pair above 0.9 is vanishingly rare at these spreads.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch


def clustered_embeddings(num: int, dim: int = 768, concepts: int = 1000, planted: int = 100, low: float = 0.95,
                         seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Unit rows ``[num, dim]`` float32 and the planted pairs ``[planted, 2]`` (i < j) with cosine in ``[low, 1]``."""
    if 2 * planted > num:
        raise ValueError(f"planted={planted} pairs need 2 * planted <= num rows, got num={num}")
    g = torch.Generator().manual_seed(seed)
    shared = torch.nn.functional.normalize(torch.randn(dim, generator=g), dim=0) * 0.55
    centres = torch.nn.functional.normalize(torch.randn(concepts, dim, generator=g), dim=-1) * 0.85
    spread = 0.6 + 0.4 * torch.rand(concepts, generator=g)
    vectors = torch.empty(num, dim)
    for start in range(0, num, 65536):  # chunks keep the temporaries small at 1M x 768
        n = min(65536, num - start)
        concept = torch.randint(concepts, (n,), generator=g)
        noise = torch.randn(n, dim, generator=g) * (spread[concept] / dim**0.5)[:, None]
        vectors[start:start + n] = torch.nn.functional.normalize(shared + centres[concept] + noise, dim=-1)
    rows = torch.randperm(num, generator=g)[:2 * planted].view(planted, 2)
    margin = 2e-4  # float32 rounding must not push a planted cosine under the threshold
    cosine = low + margin + (1 - low - margin) * torch.rand(planted, generator=g, dtype=torch.float64)
    for (original, copy), cos in zip(rows.tolist(), cosine.tolist()):
        x = vectors[original].double()
        turn = torch.randn(dim, generator=g, dtype=torch.float64)
        turn = torch.nn.functional.normalize(turn - (turn @ x) * x, dim=0)
        vectors[copy] = (cos * x + (1 - cos**2) ** 0.5 * turn).float()
    return vectors, np.sort(rows.numpy(), axis=1).astype(np.int64)


def write_embedding_shards(root: str | os.PathLike, vectors: np.ndarray, rows_per_shard: int,
                           aesthetic: np.ndarray | None = None) -> Path:
    """``vectors [N, D]`` as embed-clips writes them: parquet shards of ``rows_per_shard`` rows in its schema,
    each with its done mark. Clip ``i`` is ``v{i // 30:010d}_{i % 30:05d}`` of video ``v{i // 30:010d}``
    (the lengths of InternVid's YouTube ids and clip numbers); text embeddings and similarities are null."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from viclip.curation.stage_dir import shard_name, stats_name
    from viclip.embeddings import embeddings_schema

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    dim = vectors.shape[1]
    for s, start in enumerate(range(0, len(vectors), rows_per_shard)):
        rows = np.arange(start, min(start + rows_per_shard, len(vectors)))
        table = pa.table({
            "clip_id": [f"v{i // 30:010d}_{i % 30:05d}" for i in rows],
            "video_id": [f"v{i // 30:010d}" for i in rows],
            "aesthetic": pa.nulls(len(rows), pa.float32()) if aesthetic is None
            else pa.array(aesthetic[rows], pa.float32()),
            "video_embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors[rows].ravel(), pa.float32()), dim),
            "text_embedding": pa.nulls(len(rows), pa.list_(pa.float32(), dim)),
            "similarity": pa.nulls(len(rows), pa.float32()), "error": pa.nulls(len(rows), pa.string())})
        pq.write_table(table.cast(embeddings_schema(dim)), root / f"{shard_name(s)}.parquet")
        (root / stats_name(s)).write_text("{}")
    return root
