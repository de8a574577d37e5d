//! The envelope read in place: its fields borrowed from the stored bytes.
//!
//! A fold over the log (a projection) reads a few fields of every event and keeps fewer. A full
//! [`Event`](choreo_proto::v1::Event) decode allocates every string and both maps of every
//! event only to drop them a moment later; [`EventView`] points into the message instead.
//!
//! The walk over the wire format uses the functions of `prost::encoding` that prost's generated
//! code calls, so it reads fields exactly as [`Event::decode`](prost::Message::decode) would:
//! the last value of a field wins, unknown fields are skipped. The two maps (`attributes`,
//! `chain_visits`) are skipped unread; decode the full event when they matter.

use choreo_proto::Timestamp;
use prost::Message;
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};

use super::DecodeError;

/// An envelope's fields, borrowed from its encoded bytes. Field names and meanings are those of
/// `choreo.v1.Event`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventView<'a> {
    pub id: &'a str,
    pub event_type: &'a str,
    pub source: &'a str,
    pub time: Option<Timestamp>,
    pub correlation_id: &'a str,
    pub causation_id: &'a str,
    pub depth: u32,
    pub content_type: &'a str,
    pub data: &'a [u8],
    pub traceparent: &'a str,
    pub tokens_used: u64,
}

impl<'a> EventView<'a> {
    /// Reads an encoded envelope and checks what [`super::decode`] checks (id, correlation id
    /// and type), so a record is decodable in one form exactly when it is in the other, maps
    /// aside.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let view = Self::read(bytes)?;
        super::check_decoded(view.id, view.correlation_id, view.event_type)?;
        Ok(view)
    }

    /// Reads an encoded envelope's fields as they are, checking only that it is protobuf of
    /// the envelope's shape: the wire contract ([`super::contract`]) then says what is wrong
    /// with them, field by field.
    pub(crate) fn read(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut view = EventView::default();
        let mut buf = bytes;
        while !buf.is_empty() {
            let (tag, wire_type) = decode_key(&mut buf)?;
            match (tag, wire_type) {
                (1, WireType::LengthDelimited) => view.id = text(&mut buf)?,
                (2, WireType::LengthDelimited) => view.event_type = text(&mut buf)?,
                (3, WireType::LengthDelimited) => view.source = text(&mut buf)?,
                (4, WireType::LengthDelimited) => {
                    // A message field seen twice is merged, as prost does.
                    let mut time = view.time.unwrap_or_default();
                    time.merge(delimited(&mut buf)?)?;
                    view.time = Some(time);
                }
                (5, WireType::LengthDelimited) => view.correlation_id = text(&mut buf)?,
                (6, WireType::LengthDelimited) => view.causation_id = text(&mut buf)?,
                (7, WireType::Varint) => view.depth = decode_varint(&mut buf)? as u32,
                (8, WireType::LengthDelimited) => view.content_type = text(&mut buf)?,
                (9, WireType::LengthDelimited) => view.data = delimited(&mut buf)?,
                (11, WireType::LengthDelimited) => view.traceparent = text(&mut buf)?,
                (12, WireType::Varint) => view.tokens_used = decode_varint(&mut buf)?,
                // A field read above in another wire type is refused, as prost refuses it.
                (1..=9 | 11 | 12, _) => return Err(wrong_wire_type(tag, wire_type)),
                // The two maps, and fields of a newer envelope, are skipped unread.
                _ => skip_field(wire_type, tag, &mut buf, DecodeContext::default())?,
            }
        }
        Ok(view)
    }
}

/// The next length-delimited value.
fn delimited<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], DecodeError> {
    let len = decode_varint(buf)?;
    let len = usize::try_from(len)
        .ok()
        .filter(|len| *len <= buf.len())
        .ok_or_else(|| {
            DecodeError::Malformed(format!(
                "a field claims {len} bytes; {} are left",
                buf.len()
            ))
        })?;
    let (value, rest) = buf.split_at(len);
    *buf = rest;
    Ok(value)
}

/// The next length-delimited value, which must be UTF-8 (a protobuf `string`).
fn text<'a>(buf: &mut &'a [u8]) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(delimited(buf)?)
        .map_err(|err| DecodeError::Malformed(format!("a string field is not UTF-8: {err}")))
}

fn wrong_wire_type(tag: u32, wire_type: WireType) -> DecodeError {
    DecodeError::Malformed(format!(
        "field {tag} has wire type {wire_type:?}, not the one choreo.v1.Event declares"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Emit, RootEvent, stamp_child};
    use crate::names::{AgentName, EventType};
    use choreo_proto::v1::Event;

    fn sample() -> Event {
        let root = RootEvent::new(
            Emit::json(
                EventType::new("review.requested").expect("type"),
                &serde_json::json!({"diff": "+x"}),
            )
            .expect("json"),
            "cli",
        )
        .with_correlation_id("run-7")
        .into_event()
        .expect("valid");
        let mut child = stamp_child(
            &root,
            &AgentName::new("triage").expect("name"),
            0,
            Emit::json(
                EventType::new("review.planned").expect("type"),
                &serde_json::json!({"n": 1}),
            )
            .expect("json")
            .tokens_used(42),
        );
        child.attributes.insert("k".to_string(), "v".to_string());
        child
    }

    #[test]
    fn a_view_reads_the_fields_a_full_decode_reads() {
        let event = sample();
        let bytes = event.encode_to_vec();
        let view = EventView::decode(&bytes).expect("decodes");
        assert_eq!(view.id, event.id);
        assert_eq!(view.event_type, event.r#type);
        assert_eq!(view.source, event.source);
        assert_eq!(view.time, event.time);
        assert_eq!(view.correlation_id, event.correlation_id);
        assert_eq!(view.causation_id, event.causation_id);
        assert_eq!(view.depth, event.depth);
        assert_eq!(view.content_type, event.content_type);
        assert_eq!(view.data, &event.data[..]);
        assert_eq!(view.traceparent, event.traceparent);
        assert_eq!(view.tokens_used, 42);
        assert!(
            !event.chain_visits.is_empty(),
            "the maps are there, and skipped"
        );
    }

    #[test]
    fn a_view_refuses_what_a_full_decode_refuses() {
        let bytes = sample().encode_to_vec();
        // Cut anywhere inside, the message is truncated; both refuse, neither panics.
        for end in 1..bytes.len() {
            let cut = &bytes[..end];
            assert_eq!(
                EventView::decode(cut).is_ok(),
                crate::envelope::decode(cut).is_ok(),
                "cut at {end}"
            );
        }
        // Valid protobuf, unusable event: no id.
        let mut no_id = sample();
        no_id.id.clear();
        let bytes = no_id.encode_to_vec();
        assert!(matches!(
            EventView::decode(&bytes),
            Err(DecodeError::Invalid(_))
        ));
        // A string field that is not UTF-8.
        let mut bytes = vec![0x12, 2, 0xff, 0xfe];
        bytes.extend(sample().encode_to_vec());
        assert!(matches!(
            EventView::decode(&bytes),
            Err(DecodeError::Malformed(_))
        ));
        assert!(crate::envelope::decode(&bytes[..]).is_err());
        // Field 2 (type) sent as a varint.
        let bytes = [0x10, 1];
        assert!(EventView::decode(&bytes).is_err());
        assert!(crate::envelope::decode(&bytes[..]).is_err());
    }

    #[test]
    fn the_last_value_of_a_field_wins_and_unknown_fields_are_skipped() {
        let first = sample();
        let mut second = sample();
        second.source = "later".to_string();
        second.tokens_used = 7;
        let mut bytes = first.encode_to_vec();
        // An unknown field 99 (varint), then the second event's fields over the first's.
        bytes.extend([0x98, 0x06, 0x05]);
        bytes.extend(second.encode_to_vec());
        let view = EventView::decode(&bytes).expect("decodes");
        let full = crate::envelope::decode(&bytes[..]).expect("decodes");
        assert_eq!(view.source, "later");
        assert_eq!(view.source, full.source);
        assert_eq!(view.tokens_used, full.tokens_used);
        assert_eq!(view.time, full.time);
    }
}
