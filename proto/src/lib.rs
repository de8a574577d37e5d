//! The choreo wire format: the `choreo.v1` protobuf messages, generated at build time from the
//! `.proto` files beside this crate.
//!
//! - [`v1::Event`]: the envelope around every event (see `choreo/v1/event.proto` for how it maps
//!   onto CloudEvents 1.0).
//! - [`v1::DeadLetter`]: a message an agent gave up on, with the original bytes untouched.
//!
//! Other crates should build events through `choreo-bus`, which validates them and stamps
//! causation; this crate is only the schema.

/// Version 1 of the schema. A breaking change gets a new package, never an edit here.
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/choreo.v1.rs"));
}

pub use prost::Message;
pub use prost_types::Timestamp;
