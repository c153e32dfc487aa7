//! Test harness shared by the end-to-end tests and the dev stack: real `nats-server` and
//! SeaweedFS processes on free ports, the services in-process or as processes, an OTLP receiver,
//! and HTTP helpers.

pub mod bench;
pub mod browser;
pub mod chaos;
pub mod cluster;
pub mod otlp;
pub mod processes;
pub mod queue;
pub mod receiver;
pub mod servers;
pub mod sse;
pub mod stack;
pub mod wait;

/// Deterministic pseudo-random content for a file id (xorshift), so tests can compare bytes.
pub fn sample_bytes(file_id: u64, size: usize) -> Vec<u8> {
    let mut state = file_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = Vec::with_capacity(size);
    while bytes.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let take = (size - bytes.len()).min(8);
        bytes.extend_from_slice(&state.to_le_bytes()[..take]);
    }
    bytes
}
