"""fp64 NumPy reference of causal attention (bottom-right aligned) restricted to kept key blocks."""
import numpy as np


def attention(q, k, v, kept=None, block_size=128, scale=None):
    """q [Lq, Hq, D], k/v [Lkv, Hkv, D] (one sequence); kept(h, i_abs) -> iterable of key blocks or None (dense).
    Returns out [Lq, Hq, D] and lse [Hq, Lq] (float64)."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    lq, hq, d = q.shape
    lkv, hkv, _ = k.shape
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    out = np.zeros((lq, hq, d))
    lse = np.full((hq, lq), -np.inf)
    shift = lkv - lq
    for h in range(hq):
        kh, vh = k[:, h // (hq // hkv)], v[:, h // (hq // hkv)]
        logits = scale * q[:, h] @ kh.T  # [Lq, Lkv]
        pos = shift + np.arange(lq)
        allowed = np.arange(lkv)[None, :] <= pos[:, None]
        if kept is not None:
            block_ok = np.zeros((lq, lkv), dtype=bool)
            for t in range(lq):
                for j in kept(h, pos[t] // block_size):
                    block_ok[t, j * block_size:(j + 1) * block_size] = True
            allowed &= block_ok
        logits = np.where(allowed, logits, -np.inf)
        row_max = logits.max(axis=1, keepdims=True)
        safe = np.where(np.isfinite(row_max), row_max, 0.0)
        p = np.exp(logits - safe)
        total = p.sum(axis=1, keepdims=True)
        out[:, h] = np.where(total > 0, (p / np.where(total > 0, total, 1)) @ vh, 0.0)
        lse[h] = np.where(total[:, 0] > 0, safe[:, 0] + np.log(np.where(total[:, 0] > 0, total[:, 0], 1)), -np.inf)
    return out, lse


def rel_error(got, ref):
    got = np.asarray(got, dtype=np.float64)
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-300))
