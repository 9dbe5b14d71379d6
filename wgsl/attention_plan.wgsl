// The tiled attention core's sizes, override constants chosen on the host from the device
// limits (see attention_core.wgsl); a native WGSL prefill pass declares them too, since the
// registry passes it the portable pass's constants.

override WG: u32 = 128u;
override HD: u32 = 64u;
override HW: u32 = 32u;
override ROWS: u32 = 8u;
override T: u32 = 16u;
override ACC: u32 = 1u;
// K rows are padded by one word (KSTRIDE = HW + 1) so that invocations reading different keys
// at the same dimension hit different banks.
override KSTRIDE: u32 = 33u;
// Region offsets in smem (words): q pairs (ROWS * HD, f32 bits), K tile (T * KSTRIDE), V tile
// (T * HW), scores (ROWS * T), then per row m, l, alpha (f32 bits) and the key end (u32).
override Q_OFF: u32 = 0u;
override K_OFF: u32 = 512u;
override V_OFF: u32 = 1040u;
override S_OFF: u32 = 1552u;
override M_OFF: u32 = 1680u;
override L_OFF: u32 = 1688u;
override A_OFF: u32 = 1696u;
override E_OFF: u32 = 1704u;
