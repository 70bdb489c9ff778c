//! Strata's record batch format: the unit that producers send, that the storage
//! layer appends to segment files byte for byte, and that consumers fetch.
//!
//! This crate owns the binary layout (see `docs/ARCHITECTURE.md`, "Batch
//! format"), its CRC32C checksum, record encoding, compression (lz4, zstd) and
//! the key-hash partitioner. It has no I/O and no async runtime, so the server,
//! the storage engine and the client all share one codec.
//!
//! Layout of a batch (little-endian):
//!
//! ```text
//! 0   u32  length        bytes that follow this field (batch size - 4)
//! 4   u32  crc32c        over bytes [8, end)
//! 8   u8   magic         format version, 1
//! 9   u8   attributes    bits 0-2: compression (0 none, 1 lz4, 2 zstd);
//!                        bit 3: control batch (written by the log itself)
//! 10  u16  reserved      0
//! 12  u32  record_count
//! 16  u64  base_offset   offset of the first record (assigned on append)
//! 24  u64  term          Raft term of the leader that appended the batch
//! 32  u64  log_index     Raft log index of the batch (one entry per batch)
//! 40  i64  first_timestamp_ms
//! 48  i64  max_timestamp_ms
//! 56  ...  records       (compressed: u32 uncompressed size, then the frame)
//! ```
//!
//! A control batch is a Raft entry that carries no user data (a new leader's
//! blank entry, a membership change). It holds one record whose key names the
//! kind and whose value is the payload. It takes no offset (its base offset
//! is the next data batch's), so consumers see contiguous offsets, and it is
//! never returned to them.
//!
//! A record inside the payload: zigzag varint timestamp delta from
//! `first_timestamp_ms`; varint key length + 1 (0 = no key) and key; varint
//! value length and value; varint header count, then per header a varint key
//! length, UTF-8 key, varint value length and value.

pub mod traceparent;

use bytes::{BufMut, Bytes, BytesMut};

/// Size of the fixed batch header.
pub const HEADER_LEN: usize = 56;
/// Current format version.
pub const MAGIC: u8 = 1;
/// Upper bound on a batch's decompressed payload; protects against
/// decompression bombs regardless of per-topic limits.
pub const MAX_UNCOMPRESSED_BYTES: usize = 64 * 1024 * 1024;
/// A producer's batch may decompress to at most this many bytes whatever
/// its compression ratio ...
pub const RATIO_FREE_BYTES: usize = 1024 * 1024;
/// ... and beyond them to at most this many times its compressed size:
/// a batch of 10 KB that inflates to 64 MiB is a decompression bomb, not
/// data (text and JSON compress 5-20 times).
pub const MAX_COMPRESSION_RATIO: usize = 100;
/// Upper bound on records in one batch (bounds decoding memory).
pub const MAX_RECORDS_PER_BATCH: u32 = 1_000_000;

const OFF_CRC: usize = 4;
const OFF_MAGIC: usize = 8;
const OFF_ATTR: usize = 9;
const OFF_COUNT: usize = 12;
const OFF_BASE: usize = 16;
const OFF_TERM: usize = 24;
const OFF_INDEX: usize = 32;
const OFF_FIRST_TS: usize = 40;
const OFF_MAX_TS: usize = 48;
const COMPRESSION_MASK: u8 = 0b111;
const CONTROL_BIT: u8 = 0b1000;

/// Why a byte string is not a valid batch. Always fatal for that batch: the
/// caller either rejects the request or reports corruption; never retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("batch is truncated: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("batch declares {declared} bytes but {actual} were given (one batch per buffer)")]
    Length { declared: usize, actual: usize },
    #[error("batch declares {0} records, above the limit of {MAX_RECORDS_PER_BATCH}")]
    TooManyRecords(u32),
    #[error("unsupported batch format version {0} (expected {MAGIC})")]
    BadMagic(u8),
    #[error("batch checksum mismatch: stored crc32c {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("unknown compression codec {0}")]
    UnknownCompression(u8),
    #[error("batch declares {declared} records but holds {actual}")]
    RecordCount { declared: u32, actual: u32 },
    #[error("batch holds no records")]
    Empty,
    #[error("malformed record {index}: {what}")]
    Malformed { index: u32, what: &'static str },
    #[error("batch decompresses to {size} bytes, above the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error(
        "batch of {compressed} compressed bytes decompresses to {size} bytes: beyond {RATIO_FREE_BYTES} bytes the compression ratio may be at most {MAX_COMPRESSION_RATIO}:1"
    )]
    RatioTooHigh { size: usize, compressed: usize },
    #[error("decompression failed: {0}")]
    Decompress(String),
    #[error("batch timestamps are inconsistent: max {max} below first {first}")]
    Timestamps { first: i64, max: i64 },
    #[error("control batches are written by the log itself, not by producers")]
    Control,
    #[error("batch offsets overflow: base offset {base_offset} plus {record_count} records is past the last offset")]
    OffsetOverflow { base_offset: u64, record_count: u32 },
}

/// Compression codec of a batch payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    Lz4,
    Zstd,
}

impl Compression {
    fn from_bits(bits: u8) -> Result<Self, FormatError> {
        match bits {
            0 => Ok(Self::None),
            1 => Ok(Self::Lz4),
            2 => Ok(Self::Zstd),
            other => Err(FormatError::UnknownCompression(other)),
        }
    }

    fn bits(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Lz4 => 1,
            Self::Zstd => 2,
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "lz4" => Ok(Self::Lz4),
            "zstd" => Ok(Self::Zstd),
            other => Err(format!("unknown compression '{other}' (expected none, lz4 or zstd)")),
        }
    }
}

/// A record header (key/value metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Bytes,
}

/// One record. `offset` is meaningful only for records read from a log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<Header>,
}

impl Record {
    /// Bytes this record occupies in an uncompressed payload (upper bound).
    pub fn encoded_len_hint(&self) -> usize {
        let key = self.key.as_ref().map_or(0, Bytes::len);
        let headers: usize = self.headers.iter().map(|h| h.key.len() + h.value.len() + 10).sum();
        key + self.value.len() + headers + 30
    }
}

/// Fixed header fields of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Whole batch size in bytes, header included.
    pub size: usize,
    pub crc: u32,
    pub compression: Compression,
    pub record_count: u32,
    pub base_offset: u64,
    pub term: u64,
    pub log_index: u64,
    pub first_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
    /// Written by the log (a Raft blank or membership entry), not a producer.
    pub control: bool,
}

impl BatchHeader {
    /// Offsets the batch takes: its records; none for a control batch.
    pub fn offset_count(&self) -> u32 {
        if self.control { 0 } else { self.record_count }
    }

    /// Offset after the last record of the batch (its base offset for a
    /// control batch, which takes no offset).
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.offset_count())
    }

    /// Parses the fixed header from the start of `buf`. Checks the version and
    /// the declared size, not the checksum (see [`verify`]). `buf` may hold
    /// less than the whole batch.
    pub fn parse(buf: &[u8]) -> Result<Self, FormatError> {
        if buf.len() < HEADER_LEN {
            return Err(FormatError::Truncated { needed: HEADER_LEN, available: buf.len() });
        }
        let size = read_u32(buf, 0) as usize + 4;
        if size < HEADER_LEN {
            return Err(FormatError::Truncated { needed: HEADER_LEN, available: size });
        }
        if buf[OFF_MAGIC] != MAGIC {
            return Err(FormatError::BadMagic(buf[OFF_MAGIC]));
        }
        // Offsets are computed from the base offset everywhere (each
        // record's, the next batch's): they must not wrap.
        let record_count = read_u32(buf, OFF_COUNT);
        let base_offset = read_u64(buf, OFF_BASE);
        if base_offset.checked_add(u64::from(record_count)).is_none() {
            return Err(FormatError::OffsetOverflow { base_offset, record_count });
        }
        Ok(Self {
            size,
            crc: read_u32(buf, OFF_CRC),
            compression: Compression::from_bits(buf[OFF_ATTR] & COMPRESSION_MASK)?,
            record_count,
            base_offset,
            term: read_u64(buf, OFF_TERM),
            log_index: read_u64(buf, OFF_INDEX),
            first_timestamp_ms: read_u64(buf, OFF_FIRST_TS) as i64,
            max_timestamp_ms: read_u64(buf, OFF_MAX_TS) as i64,
            control: buf[OFF_ATTR] & CONTROL_BIT != 0,
        })
    }
}

/// Parses the header and checks the checksum of the batch that fills `batch`
/// exactly.
pub fn verify(batch: &[u8]) -> Result<BatchHeader, FormatError> {
    let header = BatchHeader::parse(batch)?;
    if batch.len() < header.size {
        return Err(FormatError::Truncated { needed: header.size, available: batch.len() });
    }
    if batch.len() > header.size {
        return Err(FormatError::Length { declared: header.size, actual: batch.len() });
    }
    let computed = crc32c::crc32c(&batch[OFF_MAGIC..header.size]);
    if computed != header.crc {
        return Err(FormatError::Checksum { stored: header.crc, computed });
    }
    Ok(header)
}

/// Fully validates a batch: checksum, decompression, and that every record
/// parses and the count and timestamps agree with the header. Returns the
/// header. Used on the produce path before a batch is appended. The payload
/// may decompress to at most [`MAX_UNCOMPRESSED_BYTES`] (see
/// [`validate_within`]).
pub fn validate(batch: &[u8]) -> Result<BatchHeader, FormatError> {
    validate_within(batch, MAX_UNCOMPRESSED_BYTES)
}

/// [`validate`], with the payload decompressing to at most
/// `max_uncompressed` bytes (itself at most [`MAX_UNCOMPRESSED_BYTES`]), and
/// beyond [`RATIO_FREE_BYTES`] to at most [`MAX_COMPRESSION_RATIO`] times its
/// compressed size. Both are checked against the size the batch declares,
/// before anything is decompressed or allocated.
pub fn validate_within(batch: &[u8], max_uncompressed: usize) -> Result<BatchHeader, FormatError> {
    let header = verify(batch)?;
    if header.control {
        return Err(FormatError::Control);
    }
    if header.record_count == 0 {
        return Err(FormatError::Empty);
    }
    if header.record_count > MAX_RECORDS_PER_BATCH {
        return Err(FormatError::TooManyRecords(header.record_count));
    }
    if header.max_timestamp_ms < header.first_timestamp_ms {
        return Err(FormatError::Timestamps { first: header.first_timestamp_ms, max: header.max_timestamp_ms });
    }
    let limit = Inflation { max_bytes: max_uncompressed.min(MAX_UNCOMPRESSED_BYTES), ratio: true };
    let payload = decompress(header.compression, &batch[HEADER_LEN..header.size], limit)?;
    let mut reader = RecordReader::new(&payload, &header);
    let mut count = 0u32;
    while let Some(rec) = reader.next_raw()? {
        if rec.timestamp_ms > header.max_timestamp_ms {
            return Err(FormatError::Malformed { index: count, what: "timestamp above batch max" });
        }
        count += 1;
    }
    if count != header.record_count {
        return Err(FormatError::RecordCount { declared: header.record_count, actual: count });
    }
    Ok(header)
}

/// Where a batch sits in a partition's log: its first offset and its Raft
/// entry (term, index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Placement {
    pub base_offset: u64,
    pub term: u64,
    pub log_index: u64,
}

impl Placement {
    /// The placement `batch`'s header records.
    pub fn of(header: &BatchHeader) -> Self {
        Self { base_offset: header.base_offset, term: header.term, log_index: header.log_index }
    }
}

/// Rewrites the base offset, term and log index of an encoded batch and
/// recomputes its checksum. The storage layer calls this when it appends.
pub fn stamp(batch: &mut [u8], at: Placement) {
    batch[OFF_BASE..OFF_BASE + 8].copy_from_slice(&at.base_offset.to_le_bytes());
    batch[OFF_TERM..OFF_TERM + 8].copy_from_slice(&at.term.to_le_bytes());
    batch[OFF_INDEX..OFF_INDEX + 8].copy_from_slice(&at.log_index.to_le_bytes());
    let crc = crc32c::crc32c(&batch[OFF_MAGIC..]);
    batch[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes every record of a batch (checksum verified first), assigning
/// offsets from the batch's base offset. When the payload is uncompressed the
/// keys and values share `batch`'s buffer.
pub fn decode(batch: &Bytes) -> Result<Vec<Record>, FormatError> {
    let header = verify(batch)?;
    let payload = match header.compression {
        Compression::None => batch.slice(HEADER_LEN..header.size),
        // Stored batches were validated when produced: only the absolute cap.
        c => Bytes::from(decompress(c, &batch[HEADER_LEN..header.size], Inflation::ANY)?.into_owned()),
    };
    let mut reader = RecordReader::new(&payload, &header);
    let mut out = Vec::with_capacity((header.record_count as usize).min(payload.len()));
    while let Some(raw) = reader.next_raw()? {
        if out.len() == header.record_count as usize {
            // More records than the header declares: their offsets would
            // run past the batch's (and past u64::MAX after a base offset
            // near it). Counted for the error.
            let mut actual = header.record_count.saturating_add(1);
            while reader.next_raw()?.is_some() {
                actual = actual.saturating_add(1);
            }
            return Err(FormatError::RecordCount { declared: header.record_count, actual });
        }
        out.push(Record {
            offset: header.base_offset + out.len() as u64,
            timestamp_ms: raw.timestamp_ms,
            key: raw.key.map(|k| payload.slice_ref(k)),
            value: payload.slice_ref(raw.value),
            headers: raw
                .headers
                .into_iter()
                .map(|(k, v)| Header { key: k.to_owned(), value: payload.slice_ref(v) })
                .collect(),
        });
    }
    if out.len() as u32 != header.record_count {
        return Err(FormatError::RecordCount { declared: header.record_count, actual: out.len() as u32 });
    }
    Ok(out)
}

/// Splits a buffer holding whole batches back to back into the batches.
/// Stops with an error at the first batch that is short or malformed.
pub fn split_batches(buf: &Bytes) -> Result<Vec<Bytes>, FormatError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let header = BatchHeader::parse(&buf[pos..])?;
        if pos + header.size > buf.len() {
            return Err(FormatError::Truncated { needed: header.size, available: buf.len() - pos });
        }
        out.push(buf.slice(pos..pos + header.size));
        pos += header.size;
    }
    Ok(out)
}

/// How far a payload may inflate.
#[derive(Debug, Clone, Copy)]
struct Inflation {
    max_bytes: usize,
    /// Whether [`MAX_COMPRESSION_RATIO`] applies.
    ratio: bool,
}

impl Inflation {
    const ANY: Self = Self { max_bytes: MAX_UNCOMPRESSED_BYTES, ratio: false };

    /// Whether a payload of `compressed` bytes may inflate to `size`.
    fn check(self, size: usize, compressed: usize) -> Result<(), FormatError> {
        if size > self.max_bytes {
            return Err(FormatError::TooLarge { size, limit: self.max_bytes });
        }
        if self.ratio && size > RATIO_FREE_BYTES && size > compressed.saturating_mul(MAX_COMPRESSION_RATIO) {
            return Err(FormatError::RatioTooHigh { size, compressed });
        }
        Ok(())
    }
}

fn decompress(
    compression: Compression,
    data: &[u8],
    limit: Inflation,
) -> Result<std::borrow::Cow<'_, [u8]>, FormatError> {
    if compression == Compression::None {
        return Ok(std::borrow::Cow::Borrowed(data));
    }
    if data.len() < 4 {
        return Err(FormatError::Truncated { needed: 4, available: data.len() });
    }
    // Checked against the declared size, before anything is allocated.
    let size = read_u32(data, 0) as usize;
    limit.check(size, data.len())?;
    let frame = &data[4..];
    let out = match compression {
        Compression::Lz4 => {
            lz4_flex::block::decompress(frame, size).map_err(|e| FormatError::Decompress(e.to_string()))?
        }
        Compression::Zstd => zstd::bulk::decompress(frame, size).map_err(|e| FormatError::Decompress(e.to_string()))?,
        Compression::None => unreachable!("handled above"),
    };
    if out.len() != size {
        return Err(FormatError::Decompress(format!("expected {size} bytes, got {}", out.len())));
    }
    Ok(std::borrow::Cow::Owned(out))
}

struct RawRecord<'a> {
    timestamp_ms: i64,
    key: Option<&'a [u8]>,
    value: &'a [u8],
    headers: Vec<(&'a str, &'a [u8])>,
}

struct RecordReader<'a> {
    buf: &'a [u8],
    pos: usize,
    index: u32,
    first_ts: i64,
}

impl<'a> RecordReader<'a> {
    fn new(buf: &'a [u8], header: &BatchHeader) -> Self {
        Self { buf, pos: 0, index: 0, first_ts: header.first_timestamp_ms }
    }

    fn malformed(&self, what: &'static str) -> FormatError {
        FormatError::Malformed { index: self.index, what }
    }

    fn varint(&mut self) -> Result<u64, FormatError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(self.malformed("truncated varint"));
            };
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.malformed("varint too long"))
    }

    fn slice(&mut self, len: u64) -> Result<&'a [u8], FormatError> {
        let len = usize::try_from(len).map_err(|_| self.malformed("length overflow"))?;
        let end = self.pos.checked_add(len).ok_or_else(|| self.malformed("length overflow"))?;
        let Some(s) = self.buf.get(self.pos..end) else {
            return Err(self.malformed("field runs past the batch end"));
        };
        self.pos = end;
        Ok(s)
    }

    fn next_raw(&mut self) -> Result<Option<RawRecord<'a>>, FormatError> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let ts_delta = unzigzag(self.varint()?);
        let timestamp_ms = self.first_ts.wrapping_add(ts_delta);
        let key = match self.varint()? {
            0 => None,
            n => Some(self.slice(n - 1)?),
        };
        let value_len = self.varint()?;
        let value = self.slice(value_len)?;
        let header_count = self.varint()?;
        // Each header takes at least two bytes: a larger count is a lie that
        // would only make us allocate.
        if header_count > (self.buf.len() - self.pos) as u64 / 2 {
            return Err(self.malformed("more headers than bytes left"));
        }
        let mut headers = Vec::with_capacity(header_count as usize);
        for _ in 0..header_count {
            let klen = self.varint()?;
            let k = self.slice(klen)?;
            let k = std::str::from_utf8(k).map_err(|_| self.malformed("header key is not UTF-8"))?;
            let vlen = self.varint()?;
            headers.push((k, self.slice(vlen)?));
        }
        self.index += 1;
        Ok(Some(RawRecord { timestamp_ms, key, value, headers }))
    }
}

/// Builds one encoded batch from records.
#[derive(Debug)]
pub struct BatchBuilder {
    compression: Compression,
    payload: BytesMut,
    count: u32,
    first_ts: Option<i64>,
    max_ts: i64,
}

impl BatchBuilder {
    pub fn new(compression: Compression) -> Self {
        Self::with_capacity(compression, 0)
    }

    pub fn with_capacity(compression: Compression, capacity: usize) -> Self {
        Self { compression, payload: BytesMut::with_capacity(capacity), count: 0, first_ts: None, max_ts: i64::MIN }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn len(&self) -> u32 {
        self.count
    }

    /// Encoded size so far, before compression, header included.
    pub fn size(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Appends a record. Its timestamp is taken as is (the caller stamps
    /// records that have none).
    pub fn push(&mut self, record: &Record) {
        self.push_parts(record.timestamp_ms, record.key.as_deref(), &record.value, &record.headers);
    }

    pub fn push_parts(&mut self, timestamp_ms: i64, key: Option<&[u8]>, value: &[u8], headers: &[Header]) {
        let first = *self.first_ts.get_or_insert(timestamp_ms);
        self.max_ts = self.max_ts.max(timestamp_ms);
        let p = &mut self.payload;
        put_varint(p, zigzag(timestamp_ms.wrapping_sub(first)));
        match key {
            None => put_varint(p, 0),
            Some(k) => {
                put_varint(p, k.len() as u64 + 1);
                p.put_slice(k);
            }
        }
        put_varint(p, value.len() as u64);
        p.put_slice(value);
        put_varint(p, headers.len() as u64);
        for h in headers {
            put_varint(p, h.key.len() as u64);
            p.put_slice(h.key.as_bytes());
            put_varint(p, h.value.len() as u64);
            p.put_slice(&h.value);
        }
        self.count += 1;
    }

    /// Finishes the batch with base offset, term and log index 0 (the log
    /// assigns them on append).
    pub fn build(self) -> Bytes {
        self.finish(0)
    }

    fn finish(self, attributes: u8) -> Bytes {
        let payload: std::borrow::Cow<'_, [u8]> = match self.compression {
            Compression::None => std::borrow::Cow::Borrowed(&self.payload[..]),
            Compression::Lz4 => {
                let mut out = (self.payload.len() as u32).to_le_bytes().to_vec();
                out.extend_from_slice(&lz4_flex::block::compress(&self.payload));
                std::borrow::Cow::Owned(out)
            }
            Compression::Zstd => {
                let mut out = (self.payload.len() as u32).to_le_bytes().to_vec();
                // Level 1: fast; producers care about latency more than ratio.
                let frame = zstd::bulk::compress(&self.payload, 1)
                    .unwrap_or_else(|e| panic!("zstd compression of an in-memory buffer failed: {e}"));
                out.extend_from_slice(&frame);
                std::borrow::Cow::Owned(out)
            }
        };
        let first = self.first_ts.unwrap_or(0);
        let max = if self.count == 0 { 0 } else { self.max_ts };
        let mut out = BytesMut::with_capacity(HEADER_LEN + payload.len());
        out.put_u32_le((HEADER_LEN + payload.len() - 4) as u32);
        out.put_u32_le(0); // crc, filled by stamp
        out.put_u8(MAGIC);
        out.put_u8(self.compression.bits() | attributes);
        out.put_u16_le(0);
        out.put_u32_le(self.count);
        out.put_u64_le(0); // base offset
        out.put_u64_le(0); // term
        out.put_u64_le(0); // log index
        out.put_i64_le(first);
        out.put_i64_le(max);
        out.put_slice(&payload);
        stamp(&mut out, Placement::default());
        out.freeze()
    }
}

/// A control batch: one record whose key is `kind` and whose value is
/// `payload` (see the module documentation). Placement 0 until stamped.
pub fn control_batch(kind: &str, payload: &[u8], timestamp_ms: i64) -> Bytes {
    let mut builder = BatchBuilder::with_capacity(Compression::None, kind.len() + payload.len() + 16);
    builder.push_parts(timestamp_ms, Some(kind.as_bytes()), payload, &[]);
    builder.finish(CONTROL_BIT)
}

/// The kind and payload of a control batch (checksum verified).
pub fn decode_control(batch: &Bytes) -> Result<(String, Bytes), FormatError> {
    let header = verify(batch)?;
    if !header.control {
        return Err(FormatError::Malformed { index: 0, what: "not a control batch" });
    }
    let record = decode(batch)?.into_iter().next().ok_or(FormatError::Empty)?;
    let kind = record.key.unwrap_or_default();
    let kind = std::str::from_utf8(&kind)
        .map_err(|_| FormatError::Malformed { index: 0, what: "control kind is not UTF-8" })?;
    Ok((kind.to_owned(), record.value))
}

/// Encodes records into one batch.
pub fn encode(records: &[Record], compression: Compression) -> Bytes {
    let mut builder = BatchBuilder::with_capacity(compression, records.iter().map(Record::encoded_len_hint).sum());
    for r in records {
        builder.push(r);
    }
    builder.build()
}

/// Milliseconds since the Unix epoch (the time base of record timestamps).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Partition for a record key: Kafka's murmur2-based default partitioner, so
/// the same keys land on the same partition numbers as in Kafka.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

fn read_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

fn read_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

fn put_varint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn sample(n: usize, seed: u64) -> Vec<Record> {
        println!("seed {seed}");
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|i| Record {
                offset: 0,
                timestamp_ms: 1_700_000_000_000 + rng.random_range(-5000..5000),
                key: if i % 3 == 0 { None } else { Some(Bytes::from(format!("key-{i}"))) },
                value: Bytes::from((0..rng.random_range(0..300)).map(|_| rng.random::<u8>()).collect::<Vec<_>>()),
                headers: if i % 2 == 0 {
                    vec![Header { key: "h".into(), value: Bytes::from_static(b"v") }]
                } else {
                    vec![]
                },
            })
            .collect()
    }

    #[test]
    fn roundtrip_every_codec_preserves_records_and_assigns_offsets() {
        for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let records = sample(50, 7);
            let mut batch = encode(&records, compression).to_vec();
            stamp(&mut batch, Placement { base_offset: 1000, term: 3, log_index: 7 });
            let batch = Bytes::from(batch);
            let header = validate(&batch).expect("valid batch");
            assert_eq!(header.base_offset, 1000);
            assert_eq!(header.term, 3);
            assert_eq!(header.log_index, 7);
            assert!(!header.control);
            assert_eq!(header.record_count, 50);
            assert_eq!(header.compression, compression);
            assert_eq!(header.max_timestamp_ms, records.iter().map(|r| r.timestamp_ms).max().unwrap_or(0));
            let decoded = decode(&batch).expect("decodes");
            for (i, (got, want)) in decoded.iter().zip(&records).enumerate() {
                assert_eq!(got.offset, 1000 + i as u64);
                assert_eq!(got.timestamp_ms, want.timestamp_ms);
                assert_eq!(got.key, want.key);
                assert_eq!(got.value, want.value);
                assert_eq!(got.headers, want.headers);
            }
        }
    }

    #[test]
    fn control_batches_roundtrip_and_producers_cannot_send_them() {
        let mut batch = control_batch("raft.membership", b"{\"voters\":[1,2,3]}", 1_700_000_000_000).to_vec();
        stamp(&mut batch, Placement { base_offset: 42, term: 5, log_index: 9 });
        let batch = Bytes::from(batch);
        let header = verify(&batch).expect("valid");
        assert!(header.control);
        assert_eq!((header.record_count, header.next_offset()), (1, 42), "a control batch takes no offset");
        assert_eq!(Placement::of(&header), Placement { base_offset: 42, term: 5, log_index: 9 });
        let (kind, payload) = decode_control(&batch).expect("control");
        assert_eq!(kind, "raft.membership");
        assert_eq!(&payload[..], b"{\"voters\":[1,2,3]}");
        assert_eq!(validate(&batch).expect_err("rejected"), FormatError::Control);
        let data = encode(&sample(2, 3), Compression::None);
        assert!(decode_control(&data).is_err(), "a data batch is not a control batch");
    }

    #[test]
    fn every_flipped_bit_is_caught_by_the_checksum_or_header_checks() {
        let batch = encode(&sample(5, 11), Compression::None);
        for byte in 0..batch.len() {
            for bit in 0..8 {
                let mut bad = batch.to_vec();
                bad[byte] ^= 1 << bit;
                assert!(verify(&bad).is_err(), "flip at byte {byte} bit {bit} went unnoticed");
            }
        }
    }

    #[test]
    fn truncated_batch_is_reported_as_truncated() {
        let batch = encode(&sample(3, 1), Compression::Lz4);
        let err = verify(&batch[..batch.len() - 1]).expect_err("short");
        assert!(matches!(err, FormatError::Truncated { .. }), "{err}");
        assert!(matches!(BatchHeader::parse(&batch[..10]), Err(FormatError::Truncated { .. })));
    }

    #[test]
    fn trailing_bytes_after_a_batch_are_rejected() {
        let mut batch = encode(&sample(2, 5), Compression::None).to_vec();
        let size = batch.len();
        batch.extend_from_slice(b"junk");
        stamp(&mut batch, Placement::default());
        assert_eq!(validate(&batch), Err(FormatError::Length { declared: size, actual: size + 4 }));
    }

    #[test]
    fn record_count_mismatch_is_rejected_by_validate() {
        let mut batch = encode(&sample(4, 2), Compression::None).to_vec();
        batch[OFF_COUNT..OFF_COUNT + 4].copy_from_slice(&5u32.to_le_bytes());
        stamp(&mut batch, Placement::default());
        assert_eq!(validate(&batch), Err(FormatError::RecordCount { declared: 5, actual: 4 }));
    }

    /// One record whose value is `len` zero bytes: compresses extremely well.
    fn zeros(len: usize, compression: Compression) -> Bytes {
        let mut b = BatchBuilder::new(compression);
        b.push_parts(1_700_000_000_000, None, &vec![0u8; len], &[]);
        b.build()
    }

    #[test]
    fn a_decompression_bomb_is_refused_before_it_is_inflated() {
        for compression in [Compression::Lz4, Compression::Zstd] {
            // Tens of KB at most that inflate to 64 MiB.
            let bomb = zeros(MAX_UNCOMPRESSED_BYTES - 64, compression);
            assert!(bomb.len() < 300 * 1024, "{compression:?}: {} bytes", bomb.len());
            let err = validate(&bomb).expect_err("a bomb");
            assert!(matches!(err, FormatError::RatioTooHigh { .. }), "{compression:?}: {err}");
            assert!(err.to_string().contains(&format!("at most {MAX_COMPRESSION_RATIO}:1")), "{err}");
            // Below the ratio-free size, any ratio is fine.
            validate(&zeros(RATIO_FREE_BYTES - 64, compression)).expect("1 MiB of zeros is data");
            // A topic's own limit applies before the ratio.
            let err = validate_within(&zeros(RATIO_FREE_BYTES - 64, compression), 1000).expect_err("over the limit");
            assert!(matches!(err, FormatError::TooLarge { limit: 1000, .. }), "{err}");
            assert!(err.to_string().contains("above the limit of 1000 bytes"), "{err}");
            // Stored batches decode up to the absolute cap.
            assert_eq!(decode(&bomb).expect("decodes")[0].value.len(), MAX_UNCOMPRESSED_BYTES - 64);
        }
    }

    #[test]
    fn inflation_limits_hold_exactly_at_their_bounds() {
        let limit = Inflation { max_bytes: 8 * RATIO_FREE_BYTES, ratio: true };
        limit.check(8 * RATIO_FREE_BYTES, 8 * RATIO_FREE_BYTES / MAX_COMPRESSION_RATIO + 1).expect("at the size limit");
        assert!(matches!(limit.check(8 * RATIO_FREE_BYTES + 1, 1 << 30), Err(FormatError::TooLarge { .. })));
        limit.check(RATIO_FREE_BYTES, 1).expect("any ratio up to the ratio-free size");
        let compressed = 20_000;
        limit.check(compressed * MAX_COMPRESSION_RATIO, compressed).expect("at the ratio");
        assert!(matches!(
            limit.check(compressed * MAX_COMPRESSION_RATIO + 1, compressed),
            Err(FormatError::RatioTooHigh { .. })
        ));
        Inflation::ANY.check(MAX_UNCOMPRESSED_BYTES, 1).expect("stored batches: the absolute cap only");
        assert!(Inflation::ANY.check(MAX_UNCOMPRESSED_BYTES + 1, 1 << 30).is_err());
    }

    /// Found by fuzzing (fuzz/corpus/record/regression-offset-overflow):
    /// decoding a checksum-valid batch whose base offset plus its record
    /// count passes u64::MAX panicked on the overflow (wrapped in release).
    #[test]
    fn offsets_past_the_last_are_rejected() {
        let mut batch = encode(&sample(3, 9), Compression::None).to_vec();
        stamp(&mut batch, Placement { base_offset: u64::MAX - 1, term: 1, log_index: 1 });
        let overflow = FormatError::OffsetOverflow { base_offset: u64::MAX - 1, record_count: 3 };
        assert_eq!(BatchHeader::parse(&batch), Err(overflow.clone()));
        assert_eq!(verify(&batch), Err(overflow.clone()));
        assert_eq!(decode(&Bytes::from(batch.clone())), Err(overflow));
        // Found the same way (regression-more-records-than-declared): a
        // batch declaring fewer records than it holds, at the last offset.
        let mut more = encode(&sample(2, 9), Compression::None).to_vec();
        more[OFF_COUNT..OFF_COUNT + 4].copy_from_slice(&0u32.to_le_bytes());
        stamp(&mut more, Placement { base_offset: u64::MAX, term: 1, log_index: 1 });
        assert_eq!(decode(&Bytes::from(more)), Err(FormatError::RecordCount { declared: 0, actual: 2 }));
        // The last offsets themselves are fine.
        stamp(&mut batch, Placement { base_offset: u64::MAX - 3, term: 1, log_index: 1 });
        let records = decode(&Bytes::from(batch)).expect("decodes");
        assert_eq!(records.last().map(|r| r.offset), Some(u64::MAX - 1));
    }

    #[test]
    fn empty_batch_is_rejected() {
        let batch = BatchBuilder::new(Compression::None).build();
        assert_eq!(validate(&batch), Err(FormatError::Empty));
    }

    #[test]
    fn split_batches_returns_each_batch() {
        let a = encode(&sample(2, 3), Compression::None);
        let b = encode(&sample(3, 4), Compression::Zstd);
        let mut joined = a.to_vec();
        joined.extend_from_slice(&b);
        let parts = split_batches(&Bytes::from(joined)).expect("splits");
        assert_eq!(parts, vec![a, b]);
    }

    #[test]
    fn partitioner_matches_kafka_murmur2() {
        // Reference values from Kafka's Utils.murmur2 (UtilsTest).
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32, -58897971);
        assert!(partition_for_key(b"k", 8) < 8);
    }

    #[test]
    fn zigzag_roundtrip() {
        for v in [0i64, 1, -1, i64::MAX, i64::MIN, 12345, -98765] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
    }
}
