// The sm_90 attention kernel's producer: it loads each row's Q (two buffers, so the next row's Q
// arrives while this one runs) and its kept K and V tiles into a ring of kStages stages that runs
// on across rows. One warp does it with TMA: lane 0 issues the loads and arms the barriers; every
// lane waits, so that the warp stays converged for the named barriers of the row handover. A paged
// K/V tile (PagedKV) whose pages hold fewer keys than the tile comes in one TMA per page, each
// issued by its own lane after lane 0 has armed the barrier, so that the block-table reads of a
// tile run side by side. Those reads are a dependent chain (kept block index, then page id) that
// would otherwise sit between tiles: with small pages it outlasts the consumers' tile and starves
// them. So they run ahead: tile t + 2's kept block and tile t + 1's pages are read before tile t
// waits for its stages and issues its loads, and are used an iteration later.
// Pages of 32 keys or fewer (KVLoad::kFourWarps): a tile is 4-8 boxes each of K and V, and the
// boxes of one warp are issued one after another (each TMA is its own ELECT loop), so that one warp
// cannot issue them as fast as the consumers use tiles. There all four warps of the producer
// warpgroup load: warp w the boxes of rows 32 w .. 32 w + 31 of every tile, armed by its own lane 0
// (four arrivals per tile barrier). The first warp still loads Q and hands rows over; it hands each
// row to the other three first (RowScheduler on NamedBarrier::kProducerRow).
#pragma once

#include <cstdint>

#include "cuda/kv_view.cuh"
#include "cuda/sm90/attention_traits.cuh"
#include "cuda/sm90/mma.cuh"
#include "cuda/sm90/row_scheduler.cuh"

namespace flashprefill::cuda::sm90 {

// Which producer warps issue the K/V loads.
enum class KVLoad {
  kOneWarp,    // the first warp (contiguous K/V, and pages of more than 32 keys)
  kFourWarps,  // all four, each the boxes of its 32 rows of a tile (pages of 16 or 32 keys)
};

// Paged K/V pages of at most this many keys are loaded by four warps.
constexpr int kFourWarpMaxPageSize = 32;

template <typename Traits, typename KV, KVLoad kLoad>
struct ProducerMainloop {
  static_assert(kLoad == KVLoad::kOneWarp || KV::kPaged, "only small pages are split over warps");
  // The warps that issue K/V loads, each arming its tile barriers for its share of the bytes, and
  // the rows of a tile each loads (a page of at most kFourWarpMaxPageSize keys fits in them).
  static constexpr int kLoadWarps = kLoad == KVLoad::kFourWarps ? 4 : 1;
  static constexpr int kRowsPerWarp = Traits::kBlockN / kLoadWarps;
  static_assert(kLoad == KVLoad::kOneWarp || kFourWarpMaxPageSize <= kRowsPerWarp);
  static constexpr uint64_t kCacheHint = uint64_t(cute::TMA::CacheHintSm90::EVICT_NORMAL);
  // Pipeline positions (Q buffers, K/V stages) run on across rows: counted, not reset.
  int tile_count = 0, q_count = 0;

  // Paged: a tile comes in pieces of piece_rows() keys, lane `lane` loading rows
  // [lane * piece_rows(), (lane + 1) * piece_rows()) if that is inside the tile.
  __device__ __forceinline__ static int piece_rows(const KV& kv) {
    return kv.template tma_rows<Traits::kBlockN>();
  }
  __device__ __forceinline__ static bool loads_piece(const KV& kv) {
    return int(threadIdx.x % 32) * piece_rows(kv) < Traits::kBlockN;
  }
  // Paged: the kept block of tile `tile`, read only by the lanes that load a piece (0 past the
  // row's last tile and in the other lanes: never used). Being per lane, it lives in an ordinary
  // register, which the load fills in its own time; in a uniform register (one value per warp)
  // the move into it would wait for the load at once.
  __device__ __forceinline__ static int32_t kept_block(const SparseAttentionParams& params,
                                                       const RowWork& w, const KV& kv, int tile) {
    return loads_piece(kv) && tile < w.num_tiles ? w.key_block(params, tile) : 0;
  }
  // Paged: this lane's piece of tile `tile` (kept block `block`); {0, 0} if it loads none or the
  // row has no such tile.
  __device__ __forceinline__ static TmaCoord paged_piece(const KV& kv, const RowWork& w, int tile,
                                                         int32_t block) {
    return loads_piece(kv) && tile < w.num_tiles
               ? kv.tma_piece(int64_t(block) * Traits::kBlockN +
                              int(threadIdx.x % 32) * piece_rows(kv))
               : TmaCoord{0, 0};
  }

  // Row w's Q into the next Q buffer (the first warp; lane 0 issues).
  __device__ __forceinline__ void load_q(const SharedStorage<Traits>& smem, const TensorMaps& maps,
                                         const RowWork& w, int32_t batch, bool leader) {
    const int q_buffer = q_count % Traits::kQBuffers;
    barrier_wait(&smem.q_empty[q_buffer], ((q_count / Traits::kQBuffers) & 1) ^
                                              1);  // a fresh barrier's "previous phase" is complete
    ++q_count;
    if (!leader) return;
    barrier_arrive_expect_tx(&smem.q_full[q_buffer], Traits::kQBytes);
    // Rows of the block before the chunk start have negative coordinates: TMA fills them with
    // zeros (padded) or reads the previous sequence (varlen); either way they are never written.
    const int32_t q_token = int32_t(w.coord.extent.q_token0 + w.block_start - w.shift);
    for (int panel = 0; panel < Traits::kPanels; ++panel)
      cute::SM90_TMA_LOAD_4D::copy(
          &maps.q, &smem.q_full[q_buffer], kCacheHint,
          smem.q + q_buffer * Traits::kQBytes + panel * Traits::QPanels::kPanelBytes, panel * 64,
          int32_t(w.coord.head), q_token, batch);
  }

  // KVLoad::kFourWarps: row w's K and V tiles, this warp's boxes of each (lane j: the page of rows
  // 32 w + j * page_size ..), with the same read-ahead as load(). The first warp (main_warp) also
  // loads Q and calls handover() as load() does.
  template <typename Handover>
  __device__ __forceinline__ void load_four_warps(const SharedStorage<Traits>& smem,
                                                  const TensorMaps& maps,
                                                  const SparseAttentionParams& params,
                                                  const RowWork& w, bool leader, bool main_warp,
                                                  Handover&& handover) {
    const detail::Problem& p = params.problem;
    const KV kv{p, w.coord.seq, w.coord.extent, w.kv_head};
    const int lane = threadIdx.x % 32, warp_row = (threadIdx.x / 32) % kLoadWarps * kRowsPerWarp;
    const int page_rows = p.pages.page_size;
    const bool issues = lane * page_rows < kRowsPerWarp;
    const auto piece_of = [&](int tile, int32_t block) {
      return issues && tile < w.num_tiles
                 ? kv.tma_piece(int64_t(block) * Traits::kBlockN + warp_row + lane * page_rows)
                 : TmaCoord{0, 0};
    };
    TmaCoord piece_ahead = piece_of(0, w.key_block(params, 0));
    int32_t block_ahead = w.num_tiles > 1 ? w.key_block(params, 1) : 0;
    if (main_warp) load_q(smem, maps, w, 0, leader);
    const int before_handover = w.num_tiles < Traits::kStages ? w.num_tiles : Traits::kStages;
#pragma unroll 1
    for (int tile = 0; tile < w.num_tiles; ++tile, ++tile_count) {
      if (main_warp && tile == before_handover) handover();
      const int stage = tile_count % Traits::kStages;
      const uint32_t phase = (tile_count / Traits::kStages) & 1;
      const TmaCoord piece = piece_ahead;
      piece_ahead = piece_of(tile + 1, block_ahead);
      block_ahead = tile + 2 < w.num_tiles ? w.key_block(params, tile + 2) : 0;
      const auto load_tile = [&](const CUtensorMap* map, uint64_t* empty, uint64_t* full,
                                 unsigned char* tiles) {
        barrier_wait(&empty[stage], phase ^ 1);
        if (lane == 0) barrier_arrive_expect_tx(&full[stage], Traits::kTileBytes / kLoadWarps);
        __syncwarp();
        if (!issues) return;
        for (int panel = 0; panel < Traits::kPanels; ++panel)
          cute::SM90_TMA_LOAD_4D::copy(
              map, &full[stage], kCacheHint,
              tiles + stage * Traits::kTileBytes + panel * Traits::KVPanels::kPanelBytes +
                  (warp_row + lane * page_rows) * Traits::KVPanels::kRowBytes,
              panel * 64, int32_t(w.kv_head), piece.token, piece.batch);
      };
      load_tile(&maps.k, smem.k_empty, smem.k_full, smem.k);
      load_tile(&maps.v, smem.v_empty, smem.v_full, smem.v);
    }
    if (main_warp && before_handover == w.num_tiles) handover();
  }

  // Loads row w (which has tiles): its Q, then K and V of each kept block. handover() is called
  // once Q and the first stages are on their way (so the consumers find them landing), and before
  // any load that needs a stage this row's consumers free.
  template <typename Handover>
  __device__ __forceinline__ void load(const SharedStorage<Traits>& smem, const TensorMaps& maps,
                                       const SparseAttentionParams& params, const RowWork& w,
                                       bool leader, Handover&& handover) {
    const detail::Problem& p = params.problem;
    const KV kv{p, w.coord.seq, w.coord.extent, w.kv_head};
    int32_t batch = 0;  // of Q (packed when paged) and of contiguous K/V
    if constexpr (!KV::kPaged) batch = kv.tma_batch();
    // The read-ahead (paged only; dead for contiguous K/V): the next tile's piece, and the kept
    // block of the one after it.
    TmaCoord piece_ahead{0, 0};
    int32_t block_ahead = 0;
    if constexpr (KV::kPaged) {
      block_ahead = kept_block(params, w, kv, 1);
      piece_ahead = paged_piece(kv, w, 0, kept_block(params, w, kv, 0));
    }
    load_q(smem, maps, w, batch, leader);
    const int before_handover = w.num_tiles < Traits::kStages ? w.num_tiles : Traits::kStages;
#pragma unroll 1  // 24 registers: unrolling only spills
    for (int tile = 0; tile < w.num_tiles; ++tile, ++tile_count) {
      if (tile == before_handover) handover();
      const int stage = tile_count % Traits::kStages;
      const uint32_t phase = (tile_count / Traits::kStages) & 1;
      if constexpr (KV::kPaged) {
        const TmaCoord piece = piece_ahead;
        // Issued now, waited for only at the next iteration's use.
        piece_ahead = paged_piece(kv, w, tile + 1, block_ahead);
        block_ahead = kept_block(params, w, kv, tile + 2);
        const int rows = piece_rows(kv);
        const int lane = int(threadIdx.x % 32);
        const bool issues = loads_piece(kv);
        const auto load_tile = [&](const CUtensorMap* map, uint64_t* empty, uint64_t* full,
                                   unsigned char* tiles) {
          barrier_wait(&empty[stage], phase ^ 1);
          if (leader) barrier_arrive_expect_tx(&full[stage], Traits::kTileBytes);
          __syncwarp();
          if (!issues) return;
          // A piece of `rows` rows starts rows * kRowBytes (a multiple of the 1024-byte swizzle
          // atom) into each panel, so the swizzle matches that of a whole-tile box.
          for (int panel = 0; panel < Traits::kPanels; ++panel)
            cute::SM90_TMA_LOAD_4D::copy(map, &full[stage], kCacheHint,
                                         tiles + stage * Traits::kTileBytes +
                                             panel * Traits::KVPanels::kPanelBytes +
                                             lane * rows * Traits::KVPanels::kRowBytes,
                                         panel * 64, int32_t(w.kv_head), piece.token, piece.batch);
        };
        load_tile(&maps.k, smem.k_empty, smem.k_full, smem.k);
        load_tile(&maps.v, smem.v_empty, smem.v_full, smem.v);
      } else {
        const int32_t kv_token = kv.tma_token(int64_t(w.key_block(params, tile)) * Traits::kBlockN);
        // K, then V, of this tile into the stage once its consumers have released it.
        const auto load_tile = [&](const CUtensorMap* map, uint64_t* empty, uint64_t* full,
                                   unsigned char* tiles) {
          barrier_wait(&empty[stage], phase ^ 1);
          if (!leader) return;
          barrier_arrive_expect_tx(&full[stage], Traits::kTileBytes);
          for (int panel = 0; panel < Traits::kPanels; ++panel)
            cute::SM90_TMA_LOAD_4D::copy(
                map, &full[stage], kCacheHint,
                tiles + stage * Traits::kTileBytes + panel * Traits::KVPanels::kPanelBytes,
                panel * 64, int32_t(w.kv_head), kv_token, batch);
        };
        load_tile(&maps.k, smem.k_empty, smem.k_full, smem.k);
        load_tile(&maps.v, smem.v_empty, smem.v_full, smem.v);
      }
    }
    if (before_handover == w.num_tiles) handover();
  }
};

}  // namespace flashprefill::cuda::sm90
