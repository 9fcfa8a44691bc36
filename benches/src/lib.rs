//! Benches helpers
