"""Robust discovery's layouts on the GPU against the CPU backend, on planted spans (the tests' plant_spans, in torch),
head dim 128: how many blocks the robust test adds and how many of them differ, per shape. On Hopper the best keys
are e4m3 wgmma, whose sums keep fewer bits than fp32 (docs/ROBUST.md); FLASHPREFILL_CUDA_KERNELS=ampere runs the
mma.sync kernels on the same e4m3 values.

    python bench/robust_gpu_vs_cpu.py
    FLASHPREFILL_CUDA_KERNELS=ampere python bench/robust_gpu_vs_cpu.py
"""
import os

import torch

import flashprefill as fp


def planted_spans(len_q, len_kv, heads_q, heads_kv, dim, seed):
    """The tests' plant_spans (tests/test_util.hpp) in torch: weak noise, a smooth local band in dims 0-1, and
    2 len_q / 32 spans of 1-4 keys, each read by 1-48 rows of one query head. Chunked when len_q < len_kv."""
    gen = torch.Generator().manual_seed(seed)
    q = 0.5 * torch.randn(len_q, heads_q, dim, generator=gen)
    k = 0.5 * torch.randn(len_kv, heads_kv, dim, generator=gen)
    radius, pi = 32 ** 0.5, 3.14159265
    key_angle = pi * torch.arange(len_kv).float() / len_kv
    query_angle = pi * (len_kv - len_q + torch.arange(len_q)).float() / len_kv
    k[:, :, 0] += radius * torch.cos(key_angle)[:, None]
    k[:, :, 1] += radius * torch.sin(key_angle)[:, None]
    q[:, :, 0] += radius * torch.cos(query_angle)[:, None]
    q[:, :, 1] += radius * torch.sin(query_angle)[:, None]
    group = heads_q // heads_kv

    def pick(high):
        return int(torch.randint(high, (1,), generator=gen))

    for _ in range(max(2, 2 * len_q // 32)):
        direction = torch.randn(dim, generator=gen)
        strength = 0.3 + 0.9 * torch.rand(1, generator=gen).item()
        head, t0 = pick(heads_q), pick(len_q)
        key0, keys = pick(len_kv - len_q + t0 + 1), 1 + pick(4)
        k[key0:key0 + keys, head // group] += direction
        q[t0:t0 + 1 + pick(48), head] += strength * direction
    return q[None].bfloat16(), k[None].bfloat16()


def kept_rows(layout):
    row_ptr, col_idx = layout.row_ptr.cpu().tolist(), layout.col_idx.cpu().tolist()
    return [set(col_idx[row_ptr[r]:row_ptr[r + 1]]) for r in range(len(row_ptr) - 1)]


def main():
    kernels = os.environ.get("FLASHPREFILL_CUDA_KERNELS", "hopper")
    for len_q, len_kv, heads_q, heads_kv in [(20000, 30000, 4, 2), (20000, 20000, 4, 2), (8192, 8192, 4, 2),
                                             (4096, 30000, 4, 2), (20000, 30000, 2, 2)]:
        q, k = planted_spans(len_q, len_kv, heads_q, heads_kv, 128, seed=5)
        gpu = kept_rows(fp.select_blocks(q.cuda(), k.cuda(), alpha=0.3, discovery="robust"))
        cpu = kept_rows(fp.select_blocks(q, k, alpha=0.3, discovery="robust"))
        exact = kept_rows(fp.select_blocks(q.cuda(), k.cuda(), alpha=0.3))
        differ = [(r, j, "gpu" if j in gpu[r] else "cpu") for r in range(len(gpu)) for j in sorted(gpu[r] ^ cpu[r])]
        added = sum(len(gpu[r] - exact[r]) for r in range(len(gpu)))
        print(f"[{kernels}] Lq={len_q} Lkv={len_kv} Hq={heads_q} Hkv={heads_kv}: rows {len(gpu)}/{len(cpu)}, "
              f"robust adds {added}, differ {len(differ)}; first: {differ[:12]}", flush=True)


if __name__ == "__main__":
    main()
