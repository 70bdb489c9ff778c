//! Conversions between proto messages and storage/record types.

use strata_proto::v1 as pb;
use strata_storage::{LogConfig, PartitionStatus, TopicInfo, TopicOverrides};

pub fn overrides_from_proto(c: Option<pb::TopicConfig>) -> TopicOverrides {
    let c = c.unwrap_or_default();
    TopicOverrides {
        retention_ms: c.retention_ms,
        retention_bytes: c.retention_bytes,
        segment_bytes: c.segment_bytes,
        segment_ms: c.segment_ms,
        max_message_bytes: c.max_message_bytes,
    }
}

pub fn config_to_proto(c: &LogConfig) -> pb::TopicConfig {
    pb::TopicConfig {
        retention_ms: Some(c.retention_ms),
        retention_bytes: Some(c.retention_bytes),
        segment_bytes: Some(c.segment_bytes),
        segment_ms: Some(c.segment_ms),
        max_message_bytes: Some(c.max_message_bytes),
    }
}

fn partition_to_proto(p: &PartitionStatus) -> pb::PartitionDescription {
    pb::PartitionDescription {
        partition: p.partition,
        log_start_offset: p.log_start_offset,
        high_watermark: p.high_watermark,
        segments: p.segments,
        size_bytes: p.size_bytes,
        status: match &p.failure {
            None => "online".into(),
            Some(f) => format!("failed: {f}"),
        },
        // Filled in from the cluster's metadata by the service.
        replicas: Vec::new(),
        leader: 0,
        in_sync: Vec::new(),
    }
}

pub fn topic_to_proto(t: &TopicInfo) -> pb::TopicDescription {
    pb::TopicDescription {
        name: t.name.clone(),
        topic_id: t.id,
        partition_count: t.partitions.len() as u32,
        config: Some(config_to_proto(&t.config)),
        partitions: t.partitions.iter().map(partition_to_proto).collect(),
    }
}

pub fn record_from_proto(r: &pb::Record, now_ms: i64) -> strata_record::Record {
    strata_record::Record {
        offset: 0,
        timestamp_ms: if r.timestamp_ms == 0 { now_ms } else { r.timestamp_ms },
        key: r.key.clone(),
        value: r.value.clone(),
        headers: r
            .headers
            .iter()
            .map(|h| strata_record::Header { key: h.key.clone(), value: h.value.clone() })
            .collect(),
    }
}

pub fn record_to_proto(r: strata_record::Record) -> pb::Record {
    pb::Record {
        key: r.key,
        value: r.value,
        headers: r.headers.into_iter().map(|h| pb::Header { key: h.key, value: h.value }).collect(),
        timestamp_ms: r.timestamp_ms,
        offset: r.offset,
    }
}
