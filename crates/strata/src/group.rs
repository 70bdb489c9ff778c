//! `strata group list | describe | reset`: consumer and share groups, their
//! members, committed offsets and lag, and moving a group's offsets
//! (Kafka's `kafka-consumer-groups.sh --reset-offsets`).

use anyhow::{Context, bail};
use clap::Subcommand;
use std::io::Write;
use std::time::Duration;

use strata_client::{Client, GroupConsumerConfig, ResetTo, StartOffset, proto, record_from_proto};

use crate::ClientOpts;
use crate::cli::{AckMode, ConsumeArgs, OutputFormat, connect, print_record, table};

/// How often `strata consume --group G --ack auto` commits.
const AUTO_COMMIT_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// Every group of the cluster: kind, members, state.
    List {
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
    },
    /// A group's members and, per partition, its owner, committed offset,
    /// log end offset and lag.
    Describe {
        group: String,
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
    },
    /// Moves a group's committed offsets; its consumers then replay from
    /// there. Refused while the group has members, unless --force.
    Reset {
        group: String,
        /// The topic whose offsets move.
        #[arg(long)]
        topic: String,
        /// Only these partitions (default: all), e.g. --partition 0 --partition 3.
        #[arg(long = "partition")]
        partitions: Vec<u32>,
        /// earliest | latest | OFFSET | RFC3339 time (e.g. 2026-12-03T10:00:00Z) | shift:N (N may be negative).
        #[arg(long)]
        to: String,
        /// Reset even though the group has live members (they may commit over it).
        #[arg(long)]
        force: bool,
        /// Print the offsets the reset would commit, and commit nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Parses `--to`.
pub fn parse_reset_to(to: &str) -> anyhow::Result<ResetTo> {
    match to {
        "earliest" => return Ok(ResetTo::Earliest),
        "latest" => return Ok(ResetTo::Latest),
        _ => {}
    }
    if let Some(n) = to.strip_prefix("shift:") {
        return Ok(ResetTo::Shift(n.parse().with_context(|| format!("shift:N needs a whole number, not '{n}'"))?));
    }
    if let Ok(offset) = to.parse::<u64>() {
        return Ok(ResetTo::Offset(offset));
    }
    match humantime::parse_rfc3339_weak(to) {
        Ok(t) => {
            let ms = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
            Ok(ResetTo::Timestamp(ms))
        }
        Err(_) => bail!(
            "--to '{to}' is none of: earliest, latest, an offset, an RFC 3339 time (2026-12-03T10:00:00Z) or shift:N"
        ),
    }
}

pub async fn run(opts: &ClientOpts, command: GroupCommand) -> anyhow::Result<()> {
    let client = connect(opts).await?;
    match command {
        GroupCommand::List { format } => {
            let groups = client.list_groups().await?;
            match format {
                OutputFormat::Json => {
                    let list: Vec<_> = groups
                        .iter()
                        .map(|g| {
                            serde_json::json!({"group": g.group, "kind": g.kind, "members": g.members, "state": g.state})
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&list)?);
                }
                OutputFormat::Text => {
                    let mut t = table(&["GROUP", "KIND", "MEMBERS", "STATE"]);
                    for g in &groups {
                        t.add_row(vec![g.group.clone(), g.kind.clone(), g.members.to_string(), g.state.clone()]);
                    }
                    println!("{t}");
                }
            }
        }
        GroupCommand::Describe { group, format } => {
            let d = client.describe_group(&group).await?;
            match format {
                OutputFormat::Json => {
                    let members: Vec<_> = d
                        .members
                        .iter()
                        .map(|m| {
                            serde_json::json!({
                                "member_id": m.member_id, "client_id": m.client_id, "epoch": m.member_epoch,
                                "topics": m.topics,
                                "assignment": m.assignment.iter().map(|a| serde_json::json!({"topic": a.topic, "partitions": a.partitions})).collect::<Vec<_>>(),
                            })
                        })
                        .collect();
                    let partitions: Vec<_> = d
                        .partitions
                        .iter()
                        .map(|p| {
                            serde_json::json!({
                                "topic": p.topic, "partition": p.partition, "committed": p.committed,
                                "log_end_offset": p.log_end_offset, "lag": p.lag, "member_id": p.member_id,
                                "in_flight": p.in_flight,
                            })
                        })
                        .collect();
                    let out = serde_json::json!({
                        "group": d.group, "kind": d.kind, "state": d.state, "group_epoch": d.group_epoch,
                        "coordinator": d.coordinator, "members": members, "partitions": partitions,
                    });
                    println!("{}", serde_json::to_string_pretty(&out)?);
                }
                OutputFormat::Text => {
                    println!(
                        "group {} ({} group, {}, epoch {}, coordinator node {})",
                        d.group, d.kind, d.state, d.group_epoch, d.coordinator
                    );
                    if !d.members.is_empty() {
                        let mut t = table(&["MEMBER", "CLIENT", "EPOCH", "PARTITIONS"]);
                        for m in &d.members {
                            let parts: Vec<String> = m
                                .assignment
                                .iter()
                                .map(|a| {
                                    let ps: Vec<String> = a.partitions.iter().map(u32::to_string).collect();
                                    format!("{}[{}]", a.topic, ps.join(","))
                                })
                                .collect();
                            t.add_row(vec![
                                m.member_id.clone(),
                                m.client_id.clone(),
                                m.member_epoch.to_string(),
                                parts.join(" "),
                            ]);
                        }
                        println!("{t}");
                    }
                    let in_flight = d.kind == "share";
                    let mut header = vec!["TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG", "MEMBER"];
                    if in_flight {
                        header.push("IN-FLIGHT");
                    }
                    let mut t = table(&header);
                    for p in &d.partitions {
                        let mut row = vec![
                            p.topic.clone(),
                            p.partition.to_string(),
                            p.committed.map_or("-".to_owned(), |c| c.to_string()),
                            p.log_end_offset.to_string(),
                            p.lag.to_string(),
                            if p.member_id.is_empty() { "-".to_owned() } else { p.member_id.clone() },
                        ];
                        if in_flight {
                            row.push(p.in_flight.to_string());
                        }
                        t.add_row(row);
                    }
                    println!("{t}");
                }
            }
        }
        GroupCommand::Reset { group, topic, partitions, to, force, dry_run } => {
            let to = parse_reset_to(&to)?;
            let offsets = client.reset_offsets(&group, &topic, &partitions, to, force, dry_run).await?;
            let mut t = table(&["TOPIC", "PARTITION", "NEW-OFFSET"]);
            for o in &offsets {
                t.add_row(vec![o.topic.clone(), o.partition.to_string(), o.offset.to_string()]);
            }
            println!("{t}");
            if dry_run {
                println!("dry run: nothing committed");
            } else {
                println!("group {group}: {} partition(s) of {topic} reset", offsets.len());
            }
        }
    }
    Ok(())
}

/// `strata consume TOPIC --group G`: a member of a consumer group until
/// Ctrl-C (or --max-messages), committing what it printed.
pub async fn consume_group(client: &Client, args: ConsumeArgs, start: StartOffset) -> anyhow::Result<()> {
    let group = args.group.clone().unwrap_or_default();
    let mut config = GroupConsumerConfig::new(&group, &[&args.topic]);
    config.start = start;
    config.client_id = "strata-cli".to_owned();
    if args.ack == AckMode::Auto {
        config.auto_commit = Some(AUTO_COMMIT_INTERVAL);
    }
    let mut consumer = client.group_consumer(config).await?;
    eprintln!("joined group {group} as member {}", consumer.member_id());
    let mut out = std::io::stdout().lock();
    let mut printed = 0u64;
    let mut shown = consumer.assignment();
    let result: anyhow::Result<()> = async {
        while args.max_messages.is_none_or(|n| printed < n) {
            let records = tokio::select! {
                r = consumer.poll() => r?,
                _ = tokio::signal::ctrl_c() => break,
            };
            let now = consumer.assignment();
            if now != shown {
                let list: Vec<String> = now.iter().map(|(t, p)| format!("{t}/{p}")).collect();
                eprintln!("assigned: {}", if list.is_empty() { "nothing".to_owned() } else { list.join(" ") });
                shown = now;
            }
            let take = args.max_messages.map_or(records.len(), |n| records.len().min((n - printed) as usize));
            for r in &records[..take] {
                print_record(&mut out, args.format, r.partition, &r.record)?;
            }
            out.flush()?;
            printed += take as u64;
            if take < records.len() {
                // Commit only what was printed; the rest is read again.
                consumer.commit_through(&records[..take]).await?;
                break;
            }
            if args.ack == AckMode::Manual && take > 0 {
                consumer.commit().await?;
            }
        }
        Ok(())
    }
    .await;
    let closed = consumer.close().await;
    result?;
    closed?;
    Ok(())
}

/// `strata consume TOPIC --share-group G`: a queue consumer until Ctrl-C
/// (or --max-messages), acknowledging each record printed.
pub async fn consume_share(client: &Client, args: ConsumeArgs) -> anyhow::Result<()> {
    let group = args.share_group.clone().unwrap_or_default();
    let consumer_id = format!("strata-cli-{}-{}", std::process::id(), strata_record::now_ms());
    let mut out = std::io::stdout().lock();
    let mut printed = 0u64;
    let mut pending: Vec<proto::Acknowledgement> = Vec::new();
    let fetch = |acks: Vec<proto::Acknowledgement>, max_records: u32, wait_ms: u32| proto::ShareFetchRequest {
        group: group.clone(),
        topic: args.topic.clone(),
        consumer_id: consumer_id.clone(),
        max_records,
        max_wait_ms: wait_ms,
        acks,
        ..Default::default()
    };
    while args.max_messages.is_none_or(|n| printed < n) {
        let left = args.max_messages.map_or(args.prefetch, |n| (n - printed).min(u64::from(args.prefetch)) as u32);
        let request = fetch(std::mem::take(&mut pending), left.max(1), 1_000);
        let resp = tokio::select! {
            r = client.share_fetch(request) => r?,
            _ = tokio::signal::ctrl_c() => break,
        };
        report_failed(&resp.failed);
        for shared in &resp.records {
            let Some(record) = shared.record.clone().map(record_from_proto) else { continue };
            print_record(&mut out, args.format, shared.partition, &record)?;
            out.flush()?;
            printed += 1;
            let ack = proto::Acknowledgement {
                partition: shared.partition,
                offset: record.offset,
                kind: proto::AckKind::Accept as i32,
            };
            match args.ack {
                AckMode::Manual => report_failed(&client.share_ack(&group, &args.topic, &consumer_id, &[ack]).await?),
                AckMode::Auto => pending.push(ack),
            }
        }
    }
    if !pending.is_empty() {
        report_failed(&client.share_ack(&group, &args.topic, &consumer_id, &pending).await?);
    }
    Ok(())
}

fn report_failed(failed: &[proto::AckFailure]) {
    for f in failed {
        eprintln!(
            "acknowledgement of partition {} offset {} failed: {} ({})",
            f.partition, f.offset, f.message, f.reason
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_targets_parse() {
        assert_eq!(parse_reset_to("earliest").expect("ok"), ResetTo::Earliest);
        assert_eq!(parse_reset_to("latest").expect("ok"), ResetTo::Latest);
        assert_eq!(parse_reset_to("42").expect("ok"), ResetTo::Offset(42));
        assert_eq!(parse_reset_to("shift:-5").expect("ok"), ResetTo::Shift(-5));
        assert_eq!(parse_reset_to("1970-01-01T00:00:01Z").expect("ok"), ResetTo::Timestamp(1000));
        let err = parse_reset_to("yesterday").expect_err("must fail").to_string();
        assert!(err.contains("earliest, latest"), "{err}");
        assert!(parse_reset_to("shift:x").is_err());
    }
}
