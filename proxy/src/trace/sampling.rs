//! The sampling decision, taken once at the start of a request without an allocation, and the
//! ids of the proxy's spans.
//!
//! The decision is the OpenTelemetry samplers' (parent-based, or a ratio of trace ids: the
//! same test as the SDK's `TraceIdRatioBased`, so proxies and SDKs on one path agree), taken
//! here rather than by the SDK so that an unsampled request never builds an SDK span. The SDK
//! then only sees sampled spans (its sampler is `AlwaysOn`), and [`Ids`] makes it use the
//! trace id the decision was taken on.

use std::cell::{Cell, RefCell};

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::IdGenerator;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::headers::Parent;
use super::settings::{Root, SamplerSpec};

/// Which requests are sampled, precomputed from a [`SamplerSpec`].
#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    /// Whether a parent's decision is followed.
    parent_based: bool,
    /// A trace is sampled when the low 63 bits of its id (the low 64 bits shifted right once)
    /// are below this bound; `None`: every trace.
    bound: Option<u64>,
}

impl Sampling {
    /// The sampling of `spec`.
    pub fn new(spec: SamplerSpec) -> Sampling {
        let ratio = |r: f64| {
            if r >= 1.0 {
                None
            } else {
                // As the SDK: the share of the 2^63 values below the bound.
                Some((r.max(0.0) * (1u64 << 63) as f64) as u64)
            }
        };
        let (parent_based, bound) = match spec {
            SamplerSpec::AlwaysOn => (false, None),
            SamplerSpec::AlwaysOff => (false, Some(0)),
            SamplerSpec::Ratio(r) => (false, ratio(r)),
            SamplerSpec::ParentBased(Root::AlwaysOn) => (true, None),
            SamplerSpec::ParentBased(Root::AlwaysOff) => (true, Some(0)),
            SamplerSpec::ParentBased(Root::Ratio(r)) => (true, ratio(r)),
        };
        Sampling {
            parent_based,
            bound,
        }
    }

    /// Whether the span of a request in trace `trace_id`, continuing `parent` (if any), is
    /// sampled. A parent without a decision (B3 left it to the proxy) counts as none.
    pub fn sampled(&self, trace_id: TraceId, parent: Option<&Parent>) -> bool {
        if self.parent_based {
            if let Some(decided) = parent.and_then(|p| p.sampled) {
                return decided;
            }
        }
        match self.bound {
            None => true,
            Some(bound) => {
                let low = u128::from_be_bytes(trace_id.to_bytes()) as u64;
                (low >> 1) < bound
            }
        }
    }
}

thread_local! {
    /// Where ids come from: a small, fast generator per thread (32 bytes of state, a few
    /// instructions per id), seeded from the operating system, as the OpenTelemetry SDK's own
    /// `RandomIdGenerator` does. Ids must be unique and evenly spread (the ratio sampler reads
    /// their low bits), not secret. `rand::random()` (ChaCha, 300 bytes of state and a block
    /// refill every few requests) cost more code and cache on every request, sampled or not.
    static IDS: RefCell<SmallRng> = RefCell::new(SmallRng::from_os_rng());
}

/// A random trace id (never the invalid all-zero one).
pub fn new_trace_id() -> TraceId {
    loop {
        let id: u128 = IDS.with(|r| r.borrow_mut().random());
        if id != 0 {
            return TraceId::from(id);
        }
    }
}

/// A random span id (never the invalid all-zero one).
pub fn new_span_id() -> SpanId {
    loop {
        let id: u64 = IDS.with(|r| r.borrow_mut().random());
        if id != 0 {
            return SpanId::from(id);
        }
    }
}

thread_local! {
    /// The trace id the next root span started on this thread takes (set just before).
    static NEXT_TRACE_ID: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// Runs `start` (which starts an SDK span) so that a new trace it begins has `trace_id`: the
/// one the sampling decision was taken on.
pub fn with_trace_id<T>(trace_id: TraceId, start: impl FnOnce() -> T) -> T {
    NEXT_TRACE_ID.with(|n| n.set(Some(trace_id)));
    let out = start();
    NEXT_TRACE_ID.with(|n| n.set(None));
    out
}

/// The SDK's id generator: the trace id set by [`with_trace_id`], else random ids.
#[derive(Debug, Default)]
pub struct Ids;

impl IdGenerator for Ids {
    fn new_trace_id(&self) -> TraceId {
        NEXT_TRACE_ID
            .with(|n| n.take())
            .unwrap_or_else(new_trace_id)
    }

    fn new_span_id(&self) -> SpanId {
        new_span_id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::SpanKind;
    use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample};

    fn parent(sampled: Option<bool>) -> Parent {
        Parent {
            trace_id: TraceId::from(7u128),
            span_id: SpanId::from(9u64),
            sampled,
        }
    }

    #[test]
    fn parent_based_follows_the_parent_and_samples_new_traces_by_ratio() {
        let s = Sampling::new(SamplerSpec::ParentBased(Root::Ratio(0.0)));
        let id = new_trace_id();
        assert!(!s.sampled(id, None));
        assert!(s.sampled(id, Some(&parent(Some(true)))));
        assert!(!s.sampled(id, Some(&parent(Some(false)))));
        assert!(!s.sampled(id, Some(&parent(None))), "undecided: the ratio");
        let s = Sampling::new(SamplerSpec::ParentBased(Root::AlwaysOn));
        assert!(s.sampled(id, None));
        assert!(!s.sampled(id, Some(&parent(Some(false)))));
        let s = Sampling::new(SamplerSpec::Ratio(1.0));
        assert!(s.sampled(id, Some(&parent(Some(false)))), "parent ignored");
        let s = Sampling::new(SamplerSpec::AlwaysOff);
        assert!(!s.sampled(id, Some(&parent(Some(true)))));
    }

    #[test]
    fn the_ratio_agrees_with_the_sdk_and_holds() {
        for r in [0.0, 0.01, 0.25, 0.5, 0.999, 1.0] {
            let ours = Sampling::new(SamplerSpec::Ratio(r));
            let sdk = opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(r);
            let mut sampled = 0;
            for _ in 0..20_000 {
                let id = new_trace_id();
                let theirs = sdk
                    .should_sample(None, id, "", &SpanKind::Server, &[], &[])
                    .decision;
                let mine = ours.sampled(id, None);
                assert_eq!(
                    mine,
                    theirs == SamplingDecision::RecordAndSample,
                    "{r} {id}"
                );
                sampled += usize::from(mine);
            }
            let share = sampled as f64 / 20_000.0;
            assert!((share - r).abs() < 0.02, "ratio {r}: sampled {share}");
        }
    }

    #[test]
    fn the_sdk_takes_the_trace_id_the_decision_was_taken_on() {
        let id = TraceId::from(0x1234u128);
        let got = with_trace_id(id, || Ids.new_trace_id());
        assert_eq!(got, id);
        assert_ne!(Ids.new_trace_id(), id, "only once");
    }
}
