//! Argmax reference.

/// The index of the largest element: ties go to the lowest index, NaN never wins over a
/// number, -0.0 and +0.0 are equal, and an all-NaN input gives 0. None for an empty input.
pub fn argmax(x: &[f32]) -> Option<u32> {
    if x.is_empty() {
        return None;
    }
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in x.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        // Strictly greater keeps the first of equal values.
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    Some(best.map_or(0, |(i, _)| i as u32))
}
