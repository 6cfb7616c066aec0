// Block-sparse FlashAttention for sm_80+ (ALGORITHM.md step 5): mma.sync m16n8k16 with fp32
// accumulation, ldmatrix, cp.async double buffering of K/V tiles, online softmax in registers.
// One CTA = 64 query rows (4 warps x 16) of one layout row; it walks only that row's kept key
// blocks, 64 keys per tile, and masks only tiles that reach past a row's position or the sequence.
#pragma once

#include <cfloat>

#include "common/constants.hpp"
#include "common/problem.hpp"
#include "cuda/check.cuh"
#include "cuda/epilogue.cuh"
#include "cuda/kv_view.cuh"
#include "cuda/sm80/mma.cuh"
#include "cuda/sparse_attention.cuh"

namespace flashprefill::cuda::sm80 {

template <int kHeadDim_, bool kIsBf16_>
struct AttentionTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr bool kIsBf16 = kIsBf16_;
  static constexpr int kBlockM = 64;  // query rows per CTA
  static constexpr int kBlockN = 64;  // keys per tile
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kKSteps = kHeadDim / 16;   // k16 steps of Q K^T
  static constexpr int kKeyTiles = kBlockN / 8;   // n8 tiles of S
  static constexpr int kDimTiles = kHeadDim / 8;  // n8 tiles of O
  using Element = typename sm80::HalfType<kIsBf16>::type;
  using Swizzle = sm80::SwizzledTile<kHeadDim>;
  static constexpr int kTileElems = kBlockN * kHeadDim;
  static constexpr int kSmemBytes = (kBlockM * kHeadDim + 4 * kTileElems) * 2;  // Q, K[2], V[2]
  // Q's mma fragments stay in registers up to head dim 128; at 256 they would take 64 registers
  // beside O's 128, so each k-step re-reads its fragment from shared memory instead.
  static constexpr bool kQInRegisters = kHeadDim <= 128;
};

template <typename Traits, typename KV>
__global__ void __launch_bounds__(Traits::kThreads)
    sparse_attention_kernel(const SparseAttentionParams params) {
  using Element = typename Traits::Element;
  using Half = HalfType<Traits::kIsBf16>;
  using Swizzle = typename Traits::Swizzle;
  constexpr int D = Traits::kHeadDim, kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN;
  constexpr int kThreads = Traits::kThreads;
  const detail::Problem& p = params.problem;

  extern __shared__ __align__(128) unsigned char smem_raw[];
  Element* q_smem = reinterpret_cast<Element*>(smem_raw);
  Element* k_smem = q_smem + kBlockM * D;             // [2][kBlockN][D]
  Element* v_smem = k_smem + 2 * Traits::kTileElems;  // [2][kBlockN][D]

  // ---- which rows: a layout row (longest first when row_order is given) and a 64-row slice of it
  const int slices = p.params.block_size / kBlockM;
  const int64_t order_index = blockIdx.x / slices;
  const int slice = blockIdx.x % slices;
  if (order_index >= params.max_rows) return;
  const int64_t row = row_at(params, order_index);
  const RowCoord coord = decode_row(params, row);
  if (!coord.valid) return;
  const detail::SeqExtent& seq = coord.extent;
  const int64_t shift = coord.shift();
  const int64_t slice_start = coord.block_start(p.params.block_size) + int64_t(slice) * kBlockM;
  const detail::PositionRange slice_positions = coord.positions(slice_start, kBlockM);
  if (slice_positions.empty())
    return;  // a slice before the chunk's first query or past the sequence
  const int64_t pos_begin = slice_positions.begin, pos_end = slice_positions.end;
  const int64_t kv_head = coord.kv_head(p.group);

  const int32_t* blocks = params.dense ? nullptr : params.col_idx + params.row_ptr[row];
  const int num_blocks = params.dense ? int(coord.num_causal_blocks())
                                      : int(params.row_ptr[row + 1] - params.row_ptr[row]);
  const int tiles_per_block = p.params.block_size / kBlockN;
  const int num_tiles = num_blocks * tiles_per_block;
  auto tile_key0 = [&](int tile) -> int64_t {
    const int64_t block = params.dense ? tile / tiles_per_block : blocks[tile / tiles_per_block];
    return block * p.params.block_size + int64_t(tile % tiles_per_block) * kBlockN;
  };
  // A tile is skipped when no row of the slice sees any of its keys.
  auto next_tile = [&](int tile) {
    for (; tile < num_tiles; ++tile) {
      const int64_t key0 = tile_key0(tile);
      if (key0 < seq.len_kv && key0 <= pos_end - 1) return tile;
    }
    return num_tiles;
  };

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const auto* q_base = static_cast<const Element*>(p.q);
  const auto* k_base = static_cast<const Element*>(p.k);
  const auto* v_base = static_cast<const Element*>(p.v);

  const KV kv{p, coord.seq, seq, kv_head};
  auto load_kv = [&](int tile, int stage) {
    const int64_t key0 = tile_key0(tile);
    Element* k_tile = k_smem + stage * Traits::kTileElems;
    Element* v_tile = v_smem + stage * Traits::kTileElems;
    for (int chunk = tid; chunk < kBlockN * Swizzle::kChunks; chunk += kThreads) {
      const int r = chunk / Swizzle::kChunks, c = chunk % Swizzle::kChunks;
      const int64_t key = key0 + r;
      const bool valid = key < seq.len_kv;
      const int64_t safe_key = valid ? key : 0;  // zero-filled, but the address must stay legal
      const KVOffsets offset = kv.offsets(safe_key);
      cp_async_16(k_tile + Swizzle::offset(r, c), k_base + offset.k + c * 8, valid ? 16 : 0);
      cp_async_16(v_tile + Swizzle::offset(r, c), v_base + offset.v + c * 8, valid ? 16 : 0);
    }
  };

  int tile = next_tile(0);
  if (tile < num_tiles) {
    load_kv(tile, 0);
    cp_async_commit();
  }
  for (int chunk = tid; chunk < kBlockM * Swizzle::kChunks; chunk += kThreads) {
    const int r = chunk / Swizzle::kChunks, c = chunk % Swizzle::kChunks;
    const int64_t pos = slice_start + r;
    const bool valid = pos >= pos_begin && pos < pos_end;
    const int64_t t = valid ? pos - shift : 0;
    cp_async_16(q_smem + Swizzle::offset(r, c),
                q_base + p.q_offset(coord.seq, seq, t, coord.head) + c * 8, valid ? 16 : 0);
  }
  cp_async_commit();

  // Per thread: rows g and g + 8 of the warp's 16, as in the mma accumulator layout.
  const int g = lane / 4, quad = lane % 4;
  const int64_t row_pos[2] = {slice_start + warp * 16 + g, slice_start + warp * 16 + g + 8};
  const float scale_log2 = p.params.scale * detail::kLog2e;
  float o[Traits::kDimTiles][4] = {};
  float row_max[2] = {-FLT_MAX, -FLT_MAX};  // finite sentinel: no -inf arithmetic on the fast path
  float row_sum[2] = {0.0f, 0.0f};
  uint32_t q_frag[Traits::kQInRegisters ? Traits::kKSteps : 1][4];
  const auto load_q_frag = [&](uint32_t(&frag)[4], int kk) {
    ldmatrix_x4(frag, q_smem + Swizzle::offset(warp * 16 + (lane % 16), 2 * kk + lane / 16));
  };
  bool q_loaded = !Traits::kQInRegisters;
  int stage = 0;

  while (tile < num_tiles) {
    const int next = next_tile(tile + 1);
    if (next < num_tiles) {
      load_kv(next, stage ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if constexpr (Traits::kQInRegisters) {
      if (!q_loaded) {
        for (int kk = 0; kk < Traits::kKSteps; ++kk) load_q_frag(q_frag[kk], kk);
        q_loaded = true;
      }
    }
    const Element* k_tile = k_smem + stage * Traits::kTileElems;
    const Element* v_tile = v_smem + stage * Traits::kTileElems;

    // S = Q K^T for the warp's 16 rows x 64 keys.
    float s[Traits::kKeyTiles][4] = {};
#pragma unroll
    for (int kk = 0; kk < Traits::kKSteps; ++kk) {
      const int qk = Traits::kQInRegisters ? kk : 0;
      if constexpr (!Traits::kQInRegisters) load_q_frag(q_frag[0], kk);
#pragma unroll
      for (int np = 0; np < Traits::kKeyTiles / 2; ++np) {
        uint32_t k_frag[4];
        ldmatrix_x4(k_frag, k_tile + Swizzle::offset(16 * np + (lane % 8) + (lane / 16) * 8,
                                                     2 * kk + (lane / 8) % 2));
        const uint32_t b0[2] = {k_frag[0], k_frag[1]}, b1[2] = {k_frag[2], k_frag[3]};
        mma_16816<Traits::kIsBf16>(s[2 * np], q_frag[qk], b0);
        mma_16816<Traits::kIsBf16>(s[2 * np + 1], q_frag[qk], b1);
      }
    }

    // Mask keys past a row's position or past the sequence (only tiles that reach them).
    const int64_t key0 = tile_key0(tile);
    const bool needs_mask = key0 + kBlockN - 1 > pos_begin || key0 + kBlockN > seq.len_kv;
#pragma unroll
    for (int nt = 0; nt < Traits::kKeyTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nt][e] *= scale_log2;
        if (needs_mask) {
          const int64_t key = key0 + nt * 8 + 2 * quad + (e & 1);
          if (key > row_pos[e / 2] || key >= seq.len_kv) s[nt][e] = -INFINITY;
        }
      }

      // Online softmax (exp2 domain): new running max, rescale O and the sum, P = exp2(S - max).
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float tile_max = row_max[half];
#pragma unroll
      for (int nt = 0; nt < Traits::kKeyTiles; ++nt)
        tile_max = fmaxf(tile_max, fmaxf(s[nt][2 * half], s[nt][2 * half + 1]));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
      const float correction = exp2f(row_max[half] - tile_max);
      row_max[half] = tile_max;
      float sum = 0.0f;
#pragma unroll
      for (int nt = 0; nt < Traits::kKeyTiles; ++nt)
#pragma unroll
        for (int e = 2 * half; e < 2 * half + 2; ++e) {
          s[nt][e] = exp2f(s[nt][e] - tile_max);  // masked: exp2(-inf) = 0
          sum += s[nt][e];
        }
      row_sum[half] = row_sum[half] * correction + sum;  // per-thread partial; reduced at the end
#pragma unroll
      for (int dt = 0; dt < Traits::kDimTiles; ++dt) {
        o[dt][2 * half] *= correction;
        o[dt][2 * half + 1] *= correction;
      }
    }

    // O += P V: P's accumulators become the A operand of the next mma (16 keys per k-step).
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      uint32_t p_frag[4];
      p_frag[0] = pack(Half::from_floats(s[2 * kk][0], s[2 * kk][1]));
      p_frag[1] = pack(Half::from_floats(s[2 * kk][2], s[2 * kk][3]));
      p_frag[2] = pack(Half::from_floats(s[2 * kk + 1][0], s[2 * kk + 1][1]));
      p_frag[3] = pack(Half::from_floats(s[2 * kk + 1][2], s[2 * kk + 1][3]));
#pragma unroll
      for (int dp = 0; dp < Traits::kDimTiles / 2; ++dp) {
        uint32_t v_frag[4];
        ldmatrix_x4_trans(v_frag,
                          v_tile + Swizzle::offset(16 * kk + (lane % 16), 2 * dp + lane / 16));
        const uint32_t b0[2] = {v_frag[0], v_frag[1]}, b1[2] = {v_frag[2], v_frag[3]};
        mma_16816<Traits::kIsBf16>(o[2 * dp], p_frag, b0);
        mma_16816<Traits::kIsBf16>(o[2 * dp + 1], p_frag, b1);
      }
    }
    __syncthreads();  // this stage is refilled two tiles from now
    stage ^= 1;
    tile = next;
  }
  cp_async_wait<0>();

  // Row maxima are in log2 units already (scores were scaled before the softmax).
  store_rows<Half, Traits::kDimTiles>(p, coord, shift, row_pos, slice_positions, row_sum, row_max,
                                      1.0f, quad, [&](int dt, int e) { return o[dt][e]; });
}

template <int kHeadDim, bool kIsBf16>
void launch_sparse_attention(const SparseAttentionParams& params) {
  using Traits = AttentionTraits<kHeadDim, kIsBf16>;
  const int slices = params.problem.params.block_size / Traits::kBlockM;
  const int64_t ctas = params.max_rows * slices;
  if (ctas == 0) return;
  auto kernel = params.problem.paged() ? sparse_attention_kernel<Traits, PagedKV>
                                       : sparse_attention_kernel<Traits, ContiguousKV>;
  FP_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     Traits::kSmemBytes));
  kernel<<<dim3(unsigned(ctas)), Traits::kThreads, Traits::kSmemBytes, params.stream>>>(params);
  FP_CUDA_CHECK_LAUNCH();
}

}  // namespace flashprefill::cuda::sm80
