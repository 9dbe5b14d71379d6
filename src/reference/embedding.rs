//! Embedding gather reference.

/// For each token t, copies row `ids[t] - row_offset` of `table` (row-major, `hidden` wide,
/// already dequantised, e.g. by [`crate::quant::unpack`]) into `out[t]`; ids outside the
/// table's rows leave `out[t]` untouched, as the GPU kernel does for other chunks' ids.
pub fn embedding(table: &[f32], hidden: usize, ids: &[u32], row_offset: usize, out: &mut [f32]) {
    let rows = table.len() / hidden;
    for (t, &id) in ids.iter().enumerate() {
        let id = id as usize;
        if id < row_offset || id - row_offset >= rows {
            continue;
        }
        let r = id - row_offset;
        out[t * hidden..(t + 1) * hidden].copy_from_slice(&table[r * hidden..(r + 1) * hidden]);
    }
}
