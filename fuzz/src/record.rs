//! The record batch decoder (`strata-record`): what a server does with a
//! producer's batch (`validate`), what every reader does with a stored one
//! (`verify`, `decode`, `decode_control`, `split_batches`).
//!
//! Each input runs twice: as given (almost always stopped by the length or
//! the checksum), and with its length field and checksum fixed, so that
//! the decompression and record parsing behind them are reached.
//!
//! Checked: no panic; the decoders agree with each other (a batch that
//! validates decodes, one that decodes verifies, a control batch decodes
//! as one); decoded records carry the header's count and consecutive
//! offsets; and records decoded from a batch, encoded again with the same
//! compression, decode to the same records.

use bytes::Bytes;
use strata_record::{BatchHeader, Compression, Record};

pub fn run(data: &[u8]) -> bool {
    let raw = check(data);
    let fixed = crate::fix_batch(data).is_some_and(|b| check(&b));
    raw || fixed
}

/// Checks one buffer; `true` when it decoded.
pub fn check(data: &[u8]) -> bool {
    let bytes = Bytes::copy_from_slice(data);
    let parsed = BatchHeader::parse(data);
    let verified = strata_record::verify(data);
    let validated = strata_record::validate(data);
    let decoded = strata_record::decode(&bytes);
    let control = strata_record::decode_control(&bytes);
    let split = strata_record::split_batches(&bytes);

    if let Ok(h) = &verified {
        assert_eq!(parsed.as_ref().ok(), Some(h), "verify and parse disagree on the header");
        assert_eq!(h.size, data.len(), "a verified batch fills its buffer");
        assert_eq!(split.as_deref().ok(), Some(&[bytes.clone()][..]), "a verified batch splits into itself");
    }
    if let Ok(h) = &validated {
        assert!(!h.control, "a control batch passed producer validation");
        assert!(h.record_count > 0, "an empty batch passed producer validation");
        let records = decoded.as_ref().unwrap_or_else(|e| panic!("a batch that validates does not decode: {e}"));
        for r in records {
            assert!(r.timestamp_ms <= h.max_timestamp_ms, "a record above the batch's max timestamp validated");
        }
    }
    if let Ok(records) = &decoded {
        let h = verified.as_ref().unwrap_or_else(|e| panic!("a batch that decodes does not verify: {e}"));
        assert_eq!(records.len() as u64, u64::from(h.record_count), "decoded count differs from the header's");
        for (i, r) in records.iter().enumerate() {
            assert_eq!(Some(r.offset), h.base_offset.checked_add(i as u64), "record {i} has the wrong offset");
        }
        round_trip(records, h.compression);
    }
    if let Ok((kind, payload)) = &control {
        let h = verified.as_ref().unwrap_or_else(|e| panic!("a control batch that does not verify: {e}"));
        assert!(h.control, "decode_control accepted a data batch");
        let records = decoded.as_ref().unwrap_or_else(|e| panic!("a control batch that does not decode: {e}"));
        let first = records.first().expect("a control batch holds a record");
        // A record without a key has the empty kind (refused further up).
        let key = first.key.as_deref().unwrap_or_default();
        assert_eq!(key, kind.as_bytes(), "the control kind is the first record's key");
        assert_eq!(&first.value, payload, "the control payload is the first record's value");
    }
    decoded.is_ok()
}

/// Records encoded again decode to the same records.
fn round_trip(records: &[Record], compression: Compression) {
    let batch = strata_record::encode(records, compression);
    let again = strata_record::decode(&batch).unwrap_or_else(|e| panic!("re-encoded records do not decode: {e}"));
    assert_eq!(again.len(), records.len());
    for (a, b) in records.iter().zip(&again) {
        assert_eq!((a.timestamp_ms, &a.key, &a.value, &a.headers), (b.timestamp_ms, &b.key, &b.value, &b.headers));
    }
}
