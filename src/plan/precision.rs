//! Which precision to load Vidi in, how much free GPU memory each needs, and what to try after a
//! CUDA out-of-memory. The one place that knows these numbers.
use crate::api::{Precision, VidiJobSpec, parse_quantity_bytes};

const GIB: u64 = 1 << 30;

/// Headroom on top of the weights for activations, the vision/audio towers and CUDA context.
pub const HEADROOM_BYTES: u64 = 2 * GIB;

/// VRAM the weights take at `precision` (Vidi 1.5 9B; measured on a 24 GB RTX 4090).
pub fn model_bytes(precision: Precision) -> u64 {
    match precision {
        Precision::Fp16 | Precision::Auto => 18 * GIB,
        Precision::Int8 => 10 * GIB,
        Precision::Int4 => 5 * GIB,
    }
}

/// Free GPU memory the gate waits for before starting at `precision`.
pub fn required_free_bytes(precision: Precision) -> u64 {
    model_bytes(precision) + HEADROOM_BYTES
}

/// The threshold for one attempt: `spec.gpu.minFreeMemory` when set, else `spec.model.memory`
/// for the precision, else the default for the precision.
pub fn min_free_bytes(spec: &VidiJobSpec, precision: Precision) -> u64 {
    let declared = spec.model.memory.as_ref().and_then(|m| match precision {
        Precision::Fp16 | Precision::Auto => m.fp16.as_ref(),
        Precision::Int8 => m.int8.as_ref(),
        Precision::Int4 => m.int4.as_ref(),
    });
    spec.gpu
        .min_free_memory
        .as_ref()
        .or(declared)
        .and_then(parse_quantity_bytes)
        .unwrap_or_else(|| required_free_bytes(precision))
}

/// The precision of the first attempt. `auto` takes the highest that fits the GPU's total memory
/// when the runtime knows it, else fp16 (an out-of-memory then steps down).
pub fn first(requested: Precision, gpu_total_bytes: Option<u64>) -> Precision {
    match requested {
        Precision::Auto => {
            let fits = |p: Precision| gpu_total_bytes.is_none_or(|total| required_free_bytes(p) <= total);
            [Precision::Fp16, Precision::Int8, Precision::Int4]
                .into_iter()
                .find(|p| fits(*p))
                .unwrap_or(Precision::Int4)
        }
        fixed => fixed,
    }
}

/// The precision to retry at after running out of GPU memory at `current`; `None` when the job
/// asked for a fixed precision or nothing lower exists.
pub fn after_out_of_memory(requested: Precision, current: Precision) -> Option<Precision> {
    if requested != Precision::Auto {
        return None;
    }
    match current {
        Precision::Auto | Precision::Fp16 => Some(Precision::Int8),
        Precision::Int8 => Some(Precision::Int4),
        Precision::Int4 => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_the_highest_precision_that_fits() {
        assert_eq!(first(Precision::Auto, None), Precision::Fp16);
        assert_eq!(first(Precision::Auto, Some(80 * GIB)), Precision::Fp16);
        assert_eq!(first(Precision::Auto, Some(24 * GIB)), Precision::Fp16);
        assert_eq!(first(Precision::Auto, Some(16 * GIB)), Precision::Int8);
        assert_eq!(first(Precision::Auto, Some(8 * GIB)), Precision::Int4);
        assert_eq!(first(Precision::Auto, Some(4 * GIB)), Precision::Int4);
        assert_eq!(first(Precision::Int8, Some(80 * GIB)), Precision::Int8);
    }

    #[test]
    fn out_of_memory_steps_down_only_for_auto() {
        assert_eq!(
            after_out_of_memory(Precision::Auto, Precision::Fp16),
            Some(Precision::Int8)
        );
        assert_eq!(
            after_out_of_memory(Precision::Auto, Precision::Int8),
            Some(Precision::Int4)
        );
        assert_eq!(after_out_of_memory(Precision::Auto, Precision::Int4), None);
        assert_eq!(after_out_of_memory(Precision::Fp16, Precision::Fp16), None);
    }

    #[test]
    fn thresholds_include_headroom() {
        assert_eq!(required_free_bytes(Precision::Fp16), 20 * GIB);
        assert_eq!(required_free_bytes(Precision::Int8), 12 * GIB);
        assert_eq!(required_free_bytes(Precision::Int4), 7 * GIB);
    }
}
