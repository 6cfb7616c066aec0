// Block-sparse FlashAttention for Hopper (sm_90a), ALGORITHM.md step 5, in the shape of
// FlashAttention-3: a persistent CTA per SM takes layout rows (128 query rows = one query block
// each) from a global counter, in row_at's order (long rows first), with three warpgroups.
//  - warpgroup 0, the producer: one warp takes the next row, issues TMA loads of its Q (two
//    buffers, so the next row's Q arrives while this one runs) and of the K and V tiles of its kept
//    blocks into a ring of shared-memory stages (mbarrier full/empty pairs) that runs on across
//    rows, and hands the row's index to the consumers at a named-barrier rendezvous;
//  - warpgroups 1 and 2, the consumers, 64 query rows each: S = Q K^T and O += P V with wgmma
//    (Q, K, V from shared memory, P from registers), online softmax in registers. The softmax of
//    tile n overlaps the P V wgmma of tile n - 1 (issued before it, waited after it), and the two
//    consumers take turns issuing their wgmmas (named barriers), so one's softmax runs while the
//    other's matrix products keep the tensor cores busy.
// Tiles are 128 keys = one key block, so the causal mask is needed only on the diagonal block
// (and on a partial last block, which can only be the diagonal one).
#pragma once

#include <cuda.h>

#include <cfloat>

#include "common/constants.hpp"
#include "common/problem.hpp"
#include "cuda/check.cuh"
#include "cuda/sm90/mma.cuh"
#include "cuda/sm80/mma.cuh"
#include "cuda/sparse_attention.cuh"

namespace flashprefill::cuda::sm90 {

template <int kHeadDim_, bool kIsBf16_>
struct AttentionTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr bool kIsBf16 = kIsBf16_;
  static constexpr int kBlockM = 128;  // query rows per CTA: the whole query block
  static constexpr int kBlockN = 128;  // keys per tile: one key block
  static constexpr int kConsumers = 2;  // consumer warpgroups, 64 rows each
  static constexpr int kThreads = 128 * (1 + kConsumers);
  static constexpr int kStages = kHeadDim == 64 ? 4 : 2;  // K/V ring depth: what fits beside two Q buffers
  static constexpr int kQBuffers = 2;
  static constexpr int kPanels = kHeadDim / 64;           // 64-column TMA boxes per row
  static constexpr int kProducerRegisters = 24;
  static constexpr int kConsumerRegisters = 240;
  using QPanels = sm90::SwizzledPanels<kBlockM>;
  using KVPanels = sm90::SwizzledPanels<kBlockN>;
  static constexpr int kQBytes = kPanels * QPanels::kPanelBytes;
  static constexpr int kTileBytes = kPanels * KVPanels::kPanelBytes;  // one K or V tile
  // mbarriers, then two row slots (the order index of the next row, handed over at each rendezvous).
  static constexpr int kBarrierBytes = 8 * (2 * kQBuffers + 4 * kStages) + 4 * 2;
  // +1024: the dynamic shared window is aligned up to the swizzle atom inside the kernel.
  static constexpr int kSmemBytes = kQBuffers * kQBytes + 2 * kStages * kTileBytes + kBarrierBytes + 1024;
  static constexpr int kRowHandoverThreads = 32 + 128 * kConsumers;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory budget of one H100 SM");
};

struct TensorMaps {
  CUtensorMap q, k, v;  // [batch, token, head, dim] seen as 4-D (dim, head, token, batch), 128B swizzle
};

// One layout row's work, decided identically by every thread (producer and consumers agree).
struct RowWork {
  RowCoord coord;
  int64_t row = 0, shift = 0, block_start = 0, pos_begin = 0, pos_end = 0, kv_head = 0;
  const int32_t* blocks = nullptr;  // kept key blocks (nullptr when dense)
  int num_tiles = 0;
  bool has_rows = false;  // false: no query of this row block is in the chunk
};

template <int kBlockM>
__device__ inline RowWork row_work(const SparseAttentionParams& params, int64_t order_index) {
  const detail::Problem& p = params.problem;
  RowWork w;
  w.row = row_at(params, order_index);
  w.coord = decode_row(params, w.row);
  if (!w.coord.valid) return w;
  w.shift = w.coord.shift();
  w.block_start = w.coord.block_start(kBlockM);
  const detail::PositionRange positions = w.coord.positions(kBlockM);
  w.pos_begin = positions.begin;
  w.pos_end = positions.end;
  w.has_rows = !positions.empty();
  w.kv_head = w.coord.kv_head(p.group);
  w.blocks = params.dense ? nullptr : params.col_idx + params.row_ptr[w.row];
  w.num_tiles = params.dense ? int(w.coord.num_causal_blocks()) : int(params.row_ptr[w.row + 1] - params.row_ptr[w.row]);
  return w;
}

template <typename Traits>
__global__ void __launch_bounds__(Traits::kThreads, 1)
    sparse_attention_kernel(const __grid_constant__ SparseAttentionParams params, const __grid_constant__ TensorMaps maps) {
  constexpr int D = Traits::kHeadDim, kBlockN = Traits::kBlockN, kStages = Traits::kStages, kPanels = Traits::kPanels;
  constexpr int kQBuffers = Traits::kQBuffers;
  constexpr bool kIsBf16 = Traits::kIsBf16;
  using Half = sm80::HalfType<kIsBf16>;
  const detail::Problem& p = params.problem;

  // ---- shared memory: Q[2] | K[kStages] | V[kStages] | mbarriers | row slots
  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw_address = sm80::smem_address(smem_raw);
  unsigned char* q_smem = smem_raw + ((1024 - raw_address % 1024) % 1024);
  unsigned char* k_smem = q_smem + kQBuffers * Traits::kQBytes;
  unsigned char* v_smem = k_smem + kStages * Traits::kTileBytes;
  auto* barriers = reinterpret_cast<uint64_t*>(v_smem + kStages * Traits::kTileBytes);
  uint64_t* q_full = barriers;
  uint64_t* q_empty = q_full + kQBuffers;
  uint64_t* k_full = q_empty + kQBuffers;
  uint64_t* v_full = k_full + kStages;
  uint64_t* k_empty = v_full + kStages;
  uint64_t* v_empty = k_empty + kStages;
  // The order index of the next row (-1: no more rows), alternating between two slots: the
  // producer writes slot r % 2 before rendezvous r and the consumers read it right after; its next
  // write there comes after rendezvous r + 1, which the consumers reach only once they have read.
  auto* row_slot = reinterpret_cast<int32_t*>(v_empty + kStages);
  if (threadIdx.x == 0) {
    for (int b = 0; b < kQBuffers; ++b) {
      Barrier::init(&q_full[b], 1);
      Barrier::init(&q_empty[b], Traits::kConsumers);
    }
    for (int s = 0; s < kStages; ++s) {
      Barrier::init(&k_full[s], 1);
      Barrier::init(&v_full[s], 1);
      Barrier::init(&k_empty[s], Traits::kConsumers);  // one arrival per consumer warpgroup
      Barrier::init(&v_empty[s], Traits::kConsumers);
    }
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();

  // Through a shuffle so the compiler knows it is warp-uniform: descriptors derived from it then
  // live in uniform registers, as wgmma needs, instead of being moved there between wgmmas.
  const int warpgroup = __shfl_sync(0xffffffffu, int(threadIdx.x / 128), 0);
  // Pipeline positions (K/V stage ring, Q buffers) run on across rows: counted, not reset.

  if (warpgroup == 0) {
    // ================= producer =================
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegisters>();
    // One producer warp. All its lanes run the loop (named barriers count whole warps); lane 0 takes
    // rows, issues the TMA loads and arms the barriers.
    if (threadIdx.x >= 32) return;
    const bool leader = threadIdx.x == 0;
    constexpr uint64_t kCacheHint = uint64_t(cute::TMA::CacheHintSm90::EVICT_NORMAL);
    int tile_count = 0, q_count = 0, rendezvous = 0;
    // Hands a row (or the end, -1) to the consumers; they arrive once they have finished the last.
    const auto publish = [&](int32_t value) {
      if (leader) row_slot[rendezvous % 2] = value;
      named_barrier_sync(NamedBarrier::kRowHandover, Traits::kRowHandoverThreads);
      ++rendezvous;
    };
    // Rows come from the global counter as the CTA gets free for them: CTAs that drew long rows
    // take fewer, so every SM ends at about the same time (a fixed round-robin left 22% idle).
    for (;;) {
      int64_t order = leader ? atomicAdd(params.work_counter, 1) : 0;
      order = __shfl_sync(0xffffffffu, order, 0);
      if (order >= params.max_rows) {
        publish(-1);
        break;
      }
      const RowWork w = row_work<Traits::kBlockM>(params, order);
      if (!w.coord.valid || !w.has_rows) continue;  // no query of this block is in the chunk: nothing to write
      if (w.num_tiles == 0) {  // its consumers only write zeros: no Q, no K/V
        publish(int32_t(order));
        continue;
      }
      const detail::SeqExtent& seq = w.coord.extent;
      const int32_t batch = p.varlen ? 0 : int32_t(w.coord.seq);
      const int q_buffer = q_count % kQBuffers;
      barrier_wait(&q_empty[q_buffer], ((q_count / kQBuffers) & 1) ^ 1);  // a fresh barrier's "previous phase" is complete
      ++q_count;
      if (leader) {
        barrier_arrive_expect_tx(&q_full[q_buffer], Traits::kQBytes);
        // Rows of the block before the chunk start have negative coordinates: TMA fills them with
        // zeros (padded) or reads the previous sequence (varlen); either way they are never written.
        const int32_t q_token = int32_t(seq.q_token0 + w.block_start - w.shift);
        for (int panel = 0; panel < kPanels; ++panel)
          cute::SM90_TMA_LOAD_4D::copy(&maps.q, &q_full[q_buffer], kCacheHint,
                                       q_smem + q_buffer * Traits::kQBytes + panel * Traits::QPanels::kPanelBytes, panel * 64,
                                       int32_t(w.coord.head), q_token, batch);
      }
      // The row is handed over once its Q and its first stages are on their way (so the consumers
      // find them landing), and before any load that needs a stage this row's consumers free.
      const int before_handover = w.num_tiles < kStages ? w.num_tiles : kStages;
#pragma unroll 1  // 24 registers: unrolling only spills
      for (int tile = 0; tile < w.num_tiles; ++tile, ++tile_count) {
        if (tile == before_handover) publish(int32_t(order));
        const int stage = tile_count % kStages;
        const uint32_t phase = (tile_count / kStages) & 1;
        const int32_t kv_token = int32_t(seq.kv_token0 + int64_t(params.dense ? tile : w.blocks[tile]) * kBlockN);
        // K, then V, of this tile into the stage once its consumers have released it.
        const auto load_tile = [&](const CUtensorMap* map, uint64_t* empty, uint64_t* full, unsigned char* tiles) {
          barrier_wait(&empty[stage], phase ^ 1);
          if (!leader) return;
          barrier_arrive_expect_tx(&full[stage], Traits::kTileBytes);
          for (int panel = 0; panel < kPanels; ++panel)
            cute::SM90_TMA_LOAD_4D::copy(map, &full[stage], kCacheHint,
                                         tiles + stage * Traits::kTileBytes + panel * Traits::KVPanels::kPanelBytes, panel * 64,
                                         int32_t(w.kv_head), kv_token, batch);
        };
        load_tile(&maps.k, k_empty, k_full, k_smem);
        load_tile(&maps.v, v_empty, v_full, v_smem);
      }
      if (before_handover == w.num_tiles) publish(int32_t(order));
    }
    return;
  }

  // ================= consumers =================
  cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegisters>();
  const int consumer = warpgroup - 1;  // rows 64 * consumer .. + 63 of the block
  const int thread = threadIdx.x % 128, warp = thread / 32, lane = thread % 32;
  const int g = lane / 4, quad = lane % 4;
  const float scale_log2 = p.params.scale * detail::kLog2e;
  const uint32_t k_address = sm80::smem_address(k_smem);
  const uint32_t v_address = sm80::smem_address(v_smem);
  auto* out_base = static_cast<typename Half::type*>(p.out);
  // The consumers take turns issuing wgmmas: each waits on its own barrier, which the other's
  // arrival completes. Consumer 0 goes first (consumer 1 pre-arrives, and consumer 0 takes one last
  // turn at the end, so no arrival is left pending). Both run the same rows and tiles, so every
  // turn taken is matched by one handed over.
  constexpr int kTurn0 = int(NamedBarrier::kConsumerTurn0);
  const auto wait_turn = [&] { named_barrier_sync(NamedBarrier(kTurn0 + consumer), 256); };
  const auto pass_turn = [&] { named_barrier_arrive(NamedBarrier(kTurn0 + (1 - consumer)), 256); };
  if (consumer == 1) pass_turn();
  int tile_count = 0, q_count = 0;

  for (int rendezvous = 0;; ++rendezvous) {
    named_barrier_sync(NamedBarrier::kRowHandover, Traits::kRowHandoverThreads);
    const int32_t order = row_slot[rendezvous % 2];
    if (order < 0) break;
    const RowWork w = row_work<Traits::kBlockM>(params, order);
    const detail::SeqExtent& seq = w.coord.extent;
    // wgmma accumulator layout (per warp, as mma.sync's): element 4 * nt + e sits at row
    // 16 * warp + g + 8 * (e / 2), column 8 * nt + 2 * quad + (e % 2).
    const int64_t wg_first_pos = w.block_start + 64 * consumer;
    const int64_t row_pos[2] = {wg_first_pos + warp * 16 + g, wg_first_pos + warp * 16 + g + 8};

    float o[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
    float row_max[2] = {-FLT_MAX, -FLT_MAX};  // raw scores (scale not applied); finite, so no -inf - -inf
    float row_sum[2] = {0.0f, 0.0f};

    auto release = [&](uint64_t* barrier) {
      if (thread == 0) barrier_arrive(barrier);
    };
    if (w.num_tiles > 0) {
      const int q_buffer = q_count % kQBuffers;
      barrier_wait(&q_full[q_buffer], (q_count / kQBuffers) & 1);
      ++q_count;
      const uint32_t q_address = sm80::smem_address(q_smem) + q_buffer * Traits::kQBytes + 64 * consumer * Traits::QPanels::kRowBytes;
      float s[kBlockN / 2];
      uint32_t p_frag[kBlockN / 16][4];  // P of the tile whose P V is in flight: the A operand

      // S = Q K^T for one tile: D / 16 k-steps, each inside one 128-byte row of a panel. Descriptors
      // are computed (and pinned) before the wgmma fence: a register defined between the fence and
      // the commit makes ptxas serialise the wgmmas (warning C7513).
      auto issue_qk = [&](int stage) {
        uint64_t a[D / 16], b[D / 16];
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
          const uint32_t offset = (kk % 4) * 32;  // 16 elements along the 128-byte row
          a[kk] = make_desc_k_major(q_address + (kk / 4) * Traits::QPanels::kPanelBytes + offset);
          b[kk] = make_desc_k_major(k_address + stage * Traits::kTileBytes + (kk / 4) * Traits::KVPanels::kPanelBytes + offset);
        }
        fence_descriptors(a);
        fence_descriptors(b);
        fence_accumulators(s);
        cute::warpgroup_arrive();
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk)
          gmma_ss<kIsBf16, kBlockN>(a[kk], b[kk], s, kk == 0 ? gmma::ScaleOut::Zero : gmma::ScaleOut::One);
        cute::warpgroup_commit_batch();
      };
      // O += P V: kBlockN / 16 k-steps of 16 keys (2048 bytes of V each); V is MN-major (D contiguous).
      auto issue_pv = [&](int stage) {
        uint64_t b[kBlockN / 16];
#pragma unroll
        for (int kk = 0; kk < kBlockN / 16; ++kk)
          b[kk] = make_desc_mn_major(v_address + stage * Traits::kTileBytes + kk * 16 * Traits::KVPanels::kRowBytes,
                                     Traits::KVPanels::kPanelBytes);
        fence_descriptors(b);
        fence_accumulators(o);
        cute::warpgroup_arrive();
#pragma unroll
        for (int kk = 0; kk < kBlockN / 16; ++kk) gmma_rs<kIsBf16, D>(p_frag[kk], b[kk], o);
        cute::warpgroup_commit_batch();
      };
      // Mask and online softmax on S in place: S becomes P (fp32); returns the O rescale factors.
      // Maxima are kept on raw scores, so that scaling and the shift are one FMA before exp2. Runs
      // while the previous tile's P V wgmma is in flight: must not touch p_frag.
      auto softmax = [&](int64_t key_block, float (&correction)[2]) {
        // Only the diagonal key block (or one past it, in a layout that lists such) needs the mask:
        // every earlier block is wholly visible to every row of this query block.
        if (key_block >= w.coord.block_abs) {
          const int64_t key0 = key_block * kBlockN;
#pragma unroll
          for (int i = 0; i < kBlockN / 2; ++i) {
            const int64_t key = key0 + 8 * (i / 4) + 2 * quad + (i & 1);
            if (key > row_pos[(i % 4) / 2] || key >= seq.len_kv) s[i] = -INFINITY;
          }
        }
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          float tile_max = row_max[half];
#pragma unroll
          for (int nt = 0; nt < kBlockN / 8; ++nt) tile_max = fmaxf(tile_max, fmaxf(s[4 * nt + 2 * half], s[4 * nt + 2 * half + 1]));
          tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
          tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
          correction[half] = fast_exp2((row_max[half] - tile_max) * scale_log2);
          row_max[half] = tile_max;
          const float shift = tile_max * scale_log2;
          float sum = 0.0f;
#pragma unroll
          for (int nt = 0; nt < kBlockN / 8; ++nt)
#pragma unroll
            for (int e = 2 * half; e < 2 * half + 2; ++e) {
              s[4 * nt + e] = fast_exp2(fmaf(s[4 * nt + e], scale_log2, -shift));  // masked: exp2(-inf) = 0
              sum += s[4 * nt + e];
            }
          row_sum[half] = row_sum[half] * correction[half] + sum;  // per-thread partial; reduced at the end
        }
      };
      // P to 16 bits: the accumulators of key tiles 2kk, 2kk + 1 are exactly the A fragment of k-step kk.
      auto convert_p = [&] {
#pragma unroll
        for (int kk = 0; kk < kBlockN / 16; ++kk) {
          p_frag[kk][0] = sm80::pack(Half::from_floats(s[8 * kk + 0], s[8 * kk + 1]));
          p_frag[kk][1] = sm80::pack(Half::from_floats(s[8 * kk + 2], s[8 * kk + 3]));
          p_frag[kk][2] = sm80::pack(Half::from_floats(s[8 * kk + 4], s[8 * kk + 5]));
          p_frag[kk][3] = sm80::pack(Half::from_floats(s[8 * kk + 6], s[8 * kk + 7]));
        }
      };
      auto rescale_o = [&](const float (&correction)[2]) {
#pragma unroll
        for (int i = 0; i < D / 2; ++i) o[i] *= correction[(i % 4) / 2];
      };

      // Tile n: S_n = Q K_n^T is issued, then O += P_{n-1} V_{n-1}; the softmax of S_n runs while
      // that P V is in flight (FlashAttention-3's intra-warpgroup overlap). O is rescaled before the
      // P V that adds to it; P is converted to 16 bits only once that P V has completed. Data waits
      // come before a turn is taken, so a consumer never holds the turn while a load lands.
      const int last = w.num_tiles - 1;
      auto stage_of = [&](int tile) { return (tile_count + tile) % kStages; };
      auto phase_of = [&](int tile) { return uint32_t(((tile_count + tile) / kStages) & 1); };
      // The key block of each tile decides its mask: read from the layout at the start of the tile's
      // iteration, so the load is in flight while the waits and wgmmas run.
      auto key_block_of = [&](int tile) { return params.dense ? int32_t(tile) : w.blocks[tile]; };
      int32_t key_block = key_block_of(0);
      float correction[2];
      barrier_wait(&k_full[stage_of(0)], phase_of(0));
      wait_turn();
      issue_qk(stage_of(0));
      pass_turn();
      cute::warpgroup_wait<0>();
      fence_accumulators(s);
      release(&k_empty[stage_of(0)]);
      if (last == 0) release(&q_empty[q_buffer]);  // the row's last Q K^T has read Q
      softmax(key_block, correction);  // O is still zero: its rescale is harmless
      convert_p();
      for (int tile = 1; tile <= last; ++tile) {
        key_block = key_block_of(tile);
        barrier_wait(&k_full[stage_of(tile)], phase_of(tile));
        barrier_wait(&v_full[stage_of(tile - 1)], phase_of(tile - 1));
        wait_turn();
        issue_qk(stage_of(tile));
        rescale_o(correction);
        issue_pv(stage_of(tile - 1));
        pass_turn();
        cute::warpgroup_wait<1>();  // S_n is ready; P_{n-1} V_{n-1} may still run
        fence_accumulators(s);
        release(&k_empty[stage_of(tile)]);
        if (tile == last) release(&q_empty[q_buffer]);
        softmax(key_block, correction);
        cute::warpgroup_wait<0>();
        fence_accumulators(o);
        release(&v_empty[stage_of(tile - 1)]);
        convert_p();
      }
      rescale_o(correction);
      barrier_wait(&v_full[stage_of(last)], phase_of(last));
      wait_turn();
      issue_pv(stage_of(last));
      pass_turn();
      cute::warpgroup_wait<0>();
      fence_accumulators(o);
      release(&v_empty[stage_of(last)]);
      tile_count += w.num_tiles;
    }

    // ---- epilogue: O / sum, lse = ln(sum) + scale * max (natural log); empty rows -> 0, -inf
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float sum = row_sum[half];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const int64_t pos = row_pos[half];
      if (pos < w.pos_begin || pos >= w.pos_end) continue;
      const int64_t t = pos - w.shift;
      const float inverse = sum > 0.0f ? 1.0f / sum : 0.0f;
      auto* out_row = out_base + p.out_offset(w.coord.seq, seq, t, w.coord.head);
#pragma unroll
      for (int nt = 0; nt < D / 8; ++nt) {
        const auto pair = Half::from_floats(o[4 * nt + 2 * half] * inverse, o[4 * nt + 2 * half + 1] * inverse);
        *reinterpret_cast<typename Half::pair*>(out_row + nt * 8 + 2 * quad) = pair;
      }
      if (p.lse && quad == 0)
        p.lse[p.lse_offset(w.coord.seq, seq, t, w.coord.head)] =
            sum > 0.0f ? (row_max[half] * scale_log2 + log2f(sum)) * detail::kLn2 : -INFINITY;
    }
  }
  if (consumer == 0) wait_turn();  // takes consumer 1's last hand-over
}

template <int kHeadDim, bool kIsBf16>
void launch_sparse_attention(const SparseAttentionParams& params, const TensorMaps& maps) {
  using Traits = AttentionTraits<kHeadDim, kIsBf16>;
  if (params.max_rows == 0) return;
  auto kernel = sparse_attention_kernel<Traits>;
  FP_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Traits::kSmemBytes));
  // Persistent: one CTA per SM (or fewer when there are fewer rows), rows from params.work_counter.
  if (params.work_counter == nullptr) throw Error("flashprefill: internal: the sm_90 attention kernel needs a work counter");
  FP_CUDA_CHECK(cudaMemsetAsync(params.work_counter, 0, sizeof(int), params.stream));
  const int64_t ctas = params.num_sms > 0 && params.num_sms < params.max_rows ? params.num_sms : params.max_rows;
  kernel<<<dim3(unsigned(ctas)), Traits::kThreads, Traits::kSmemBytes, params.stream>>>(params, maps);
  FP_CUDA_CHECK_LAUNCH();
}

}  // namespace flashprefill::cuda::sm90
