// The sm_90 attention kernel's consumers: two warpgroups of 64 query rows each run S = Q K^T and
// O += P V with wgmma (Q, K, V from shared memory, P from registers) and the online softmax in
// registers. The softmax of tile n overlaps the P V wgmma of tile n - 1 (issued before it, waited
// after it: FlashAttention-3's intra-warpgroup overlap), and the two consumers take turns issuing
// their wgmmas, so one's softmax runs while the other's matrix products keep the tensor cores busy.
#pragma once

#include <cfloat>
#include <cstdint>

#include "cuda/named_barrier.cuh"
#include "cuda/sm80/mma.cuh"
#include "cuda/sm90/attention_traits.cuh"
#include "cuda/sm90/mma.cuh"
#include "cuda/sm90/row_scheduler.cuh"

namespace flashprefill::cuda::sm90 {

// The consumers take turns issuing wgmmas: each waits on its own barrier, which the other's
// arrival completes. Consumer 0 goes first (consumer 1 pre-arrives, and consumer 0 takes one last
// turn at the end, so no arrival is left pending). Both run the same rows and tiles, so every turn
// taken is matched by one handed over.
struct ConsumerTurns {
  static constexpr int kTurn0 = int(NamedBarrier::kConsumerTurn0);
  int consumer;
  __device__ __forceinline__ void wait() const {
    named_barrier_sync(NamedBarrier(kTurn0 + consumer), 256);
  }
  __device__ __forceinline__ void pass() const {
    named_barrier_arrive(NamedBarrier(kTurn0 + (1 - consumer)), 256);
  }
  __device__ __forceinline__ void start() const {
    if (consumer == 1) pass();
  }
  __device__ __forceinline__ void finish() const {
    if (consumer == 0) wait();  // takes consumer 1's last hand-over
  }
};

template <typename Traits>
struct ConsumerMainloop {
  static constexpr int D = Traits::kHeadDim, kBlockN = Traits::kBlockN, kStages = Traits::kStages;
  static constexpr bool kIsBf16 = Traits::kIsBf16;
  using Half = sm80::HalfType<kIsBf16>;
  // Pipeline positions (Q buffers, K/V stages) run on across rows, as the producer's.
  int tile_count = 0, q_count = 0;

  // Row w's tiles (w.num_tiles > 0): o += P V unnormalised, row_max (raw scores, scale not
  // applied) and row_sum (this thread's partial sums) updated. Rows 64 * consumer .. + 63 of the
  // block; row_pos: the absolute positions of the thread's two rows.
  __device__ __forceinline__ void mma(const SharedStorage<Traits>& smem,
                                      const SparseAttentionParams& params, const RowWork& w,
                                      int consumer, const ConsumerTurns& turns, float scale_log2,
                                      const int64_t (&row_pos)[2], float (&o)[D / 2],
                                      float (&row_max)[2], float (&row_sum)[2]) {
    const int thread = threadIdx.x % 128, lane = thread % 32, quad = lane % 4;
    const detail::SeqExtent& seq = w.coord.extent;
    const uint32_t k_address = sm80::smem_address(smem.k);
    const uint32_t v_address = sm80::smem_address(smem.v);
    auto release = [&](uint64_t* barrier) {
      if (thread == 0) barrier_arrive(barrier);
    };
    const int q_buffer = q_count % Traits::kQBuffers;
    barrier_wait(&smem.q_full[q_buffer], (q_count / Traits::kQBuffers) & 1);
    ++q_count;
    const uint32_t q_address = sm80::smem_address(smem.q) + q_buffer * Traits::kQBytes +
                               64 * consumer * Traits::QPanels::kRowBytes;
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
        b[kk] = make_desc_k_major(k_address + stage * Traits::kTileBytes +
                                  (kk / 4) * Traits::KVPanels::kPanelBytes + offset);
      }
      fence_descriptors(a);
      fence_descriptors(b);
      fence_accumulators(s);
      cute::warpgroup_arrive();
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
        gmma_ss<kIsBf16, kBlockN>(a[kk], b[kk], s,
                                  kk == 0 ? gmma::ScaleOut::Zero : gmma::ScaleOut::One);
      cute::warpgroup_commit_batch();
    };
    // O += P V: kBlockN / 16 k-steps of 16 keys (2048 bytes of V each); V is MN-major (D
    // contiguous).
    auto issue_pv = [&](int stage) {
      uint64_t b[kBlockN / 16];
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk)
        b[kk] = make_desc_mn_major(
            v_address + stage * Traits::kTileBytes + kk * 16 * Traits::KVPanels::kRowBytes,
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
    auto softmax = [&](int64_t key_block, float(&correction)[2]) {
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
        for (int nt = 0; nt < kBlockN / 8; ++nt)
          tile_max = fmaxf(tile_max, fmaxf(s[4 * nt + 2 * half], s[4 * nt + 2 * half + 1]));
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
            s[4 * nt + e] =
                fast_exp2(fmaf(s[4 * nt + e], scale_log2, -shift));  // masked: exp2(-inf) = 0
            sum += s[4 * nt + e];
          }
        row_sum[half] =
            row_sum[half] * correction[half] + sum;  // per-thread partial; reduced at the end
      }
    };
    // P to 16 bits: the accumulators of key tiles 2kk, 2kk + 1 are exactly the A fragment of k-step
    // kk.
    auto convert_p = [&] {
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        p_frag[kk][0] = sm80::pack(Half::from_floats(s[8 * kk + 0], s[8 * kk + 1]));
        p_frag[kk][1] = sm80::pack(Half::from_floats(s[8 * kk + 2], s[8 * kk + 3]));
        p_frag[kk][2] = sm80::pack(Half::from_floats(s[8 * kk + 4], s[8 * kk + 5]));
        p_frag[kk][3] = sm80::pack(Half::from_floats(s[8 * kk + 6], s[8 * kk + 7]));
      }
    };
    auto rescale_o = [&](const float(&correction)[2]) {
#pragma unroll
      for (int i = 0; i < D / 2; ++i) o[i] *= correction[(i % 4) / 2];
    };

    // Tile n: S_n = Q K_n^T is issued, then O += P_{n-1} V_{n-1}; the softmax of S_n runs while
    // that P V is in flight. O is rescaled before the P V that adds to it; P is converted to 16
    // bits only once that P V has completed. Data waits come before a turn is taken, so a consumer
    // never holds the turn while a load lands.
    const int last = w.num_tiles - 1;
    auto stage_of = [&](int tile) { return (tile_count + tile) % kStages; };
    auto phase_of = [&](int tile) { return uint32_t(((tile_count + tile) / kStages) & 1); };
    // The key block of each tile decides its mask: read from the layout at the start of the tile's
    // iteration, so the load is in flight while the waits and wgmmas run.
    int32_t key_block = w.key_block(params, 0);
    float correction[2];
    barrier_wait(&smem.k_full[stage_of(0)], phase_of(0));
    turns.wait();
    issue_qk(stage_of(0));
    turns.pass();
    cute::warpgroup_wait<0>();
    fence_accumulators(s);
    release(&smem.k_empty[stage_of(0)]);
    if (last == 0) release(&smem.q_empty[q_buffer]);  // the row's last Q K^T has read Q
    softmax(key_block, correction);                   // O is still zero: its rescale is harmless
    convert_p();
    for (int tile = 1; tile <= last; ++tile) {
      key_block = w.key_block(params, tile);
      barrier_wait(&smem.k_full[stage_of(tile)], phase_of(tile));
      barrier_wait(&smem.v_full[stage_of(tile - 1)], phase_of(tile - 1));
      turns.wait();
      issue_qk(stage_of(tile));
      rescale_o(correction);
      issue_pv(stage_of(tile - 1));
      turns.pass();
      cute::warpgroup_wait<1>();  // S_n is ready; P_{n-1} V_{n-1} may still run
      fence_accumulators(s);
      release(&smem.k_empty[stage_of(tile)]);
      if (tile == last) release(&smem.q_empty[q_buffer]);
      softmax(key_block, correction);
      cute::warpgroup_wait<0>();
      fence_accumulators(o);
      release(&smem.v_empty[stage_of(tile - 1)]);
      convert_p();
    }
    rescale_o(correction);
    barrier_wait(&smem.v_full[stage_of(last)], phase_of(last));
    turns.wait();
    issue_pv(stage_of(last));
    turns.pass();
    cute::warpgroup_wait<0>();
    fence_accumulators(o);
    release(&smem.v_empty[stage_of(last)]);
    tile_count += w.num_tiles;
  }
};

}  // namespace flashprefill::cuda::sm90
