//! The hosts of a run: one Linux network namespace per node, each with its
//! own address on a private bridge, so a node can be cut off from another
//! (or from the clients) without touching the rest. The harness and its
//! clients stay in the root namespace and reach every node over the bridge.
//!
//! A cut is a pair of blackhole routes (one in each namespace), so traffic
//! between the two is dropped both ways and open connections time out, as
//! on a real network partition. Needs root and `ip` (iproute2).

use std::collections::BTreeSet;
use std::process::Command;

use anyhow::{Context, bail};

/// One node's host.
#[derive(Debug, Clone)]
pub struct Host {
    /// Node id, from 1.
    pub node: u32,
    pub namespace: String,
    pub ip: String,
}

/// The private network of a run; torn down on drop.
#[derive(Debug)]
pub struct Network {
    pub hosts: Vec<Host>,
    /// `sj<tag>`: names of the bridge (`b`), namespaces (`n<i>`), veths (`v<i>`).
    prefix: String,
    bridge: String,
    subnet: String,
    /// Cut pairs (a < b) currently in place.
    cuts: BTreeSet<(u32, u32)>,
    forward_rule: bool,
}

fn run(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("cannot run {}", args[0]))?;
    if !out.status.success() {
        bail!("`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn in_ns(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut all = vec!["ip", "netns", "exec", ns];
    all.extend_from_slice(args);
    run(&all)
}

/// Why this machine cannot host a run, if it cannot.
pub fn unavailable() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if uid.as_deref() != Some("0") {
        return Some("network namespaces need root (run as root, e.g. with sudo)".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("`ip` is missing: apt-get install iproute2".into());
    }
    None
}

impl Network {
    /// Creates `nodes` hosts: namespaces `sj<tag>n<i>`, on bridge `sj<tag>b`,
    /// addresses 10.213.<net>.1 (the root namespace) and 10.213.<net>.<10+i>,
    /// `net` the first free subnet from `tag`.
    pub fn create(nodes: u32, tag: u16) -> anyhow::Result<Self> {
        if let Some(why) = unavailable() {
            bail!("cannot create the test hosts: {why}");
        }
        // A subnet no other run (or anything else here) uses.
        let in_use = Command::new("ip")
            .args(["-o", "addr"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())?;
        let net = (0..250u16)
            .map(|i| (tag + i) % 250 + 1)
            .find(|n| !in_use.contains(&format!("10.213.{n}.")))
            .context("every subnet 10.213.1-250.0/24 is in use")?;
        let prefix = format!("sj{tag}");
        let bridge = format!("{prefix}b");
        let subnet = format!("10.213.{net}.0/24");
        let mut network = Self {
            hosts: Vec::new(),
            prefix,
            bridge: bridge.clone(),
            subnet,
            cuts: BTreeSet::new(),
            forward_rule: false,
        };
        // Leftovers of an earlier run with the same tag (killed before its teardown).
        network.remove_all(nodes);
        run(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        run(&["ip", "addr", "add", &format!("10.213.{net}.1/24"), "dev", &bridge])?;
        run(&["ip", "link", "set", &bridge, "up"])?;
        // Docker's FORWARD policy may drop bridged traffic (br_netfilter).
        if run(&["iptables", "-I", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT"]).is_ok() {
            network.forward_rule = true;
        }
        for node in 1..=nodes {
            let ns = format!("{}n{node}", network.prefix);
            let outside = format!("{}v{node}", network.prefix);
            let ip = format!("10.213.{net}.{}", 10 + node);
            run(&["ip", "netns", "add", &ns])?;
            run(&["ip", "link", "add", &outside, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            run(&["ip", "link", "set", &outside, "master", &bridge])?;
            run(&["ip", "link", "set", &outside, "up"])?;
            in_ns(&ns, &["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            in_ns(&ns, &["ip", "link", "set", "eth0", "up"])?;
            in_ns(&ns, &["ip", "link", "set", "lo", "up"])?;
            network.hosts.push(Host { node, namespace: ns, ip });
        }
        Ok(network)
    }

    fn host(&self, node: u32) -> anyhow::Result<&Host> {
        self.hosts.iter().find(|h| h.node == node).with_context(|| format!("no host for node {node}"))
    }

    /// Cuts every link between a node of `a` and a node of `b`.
    pub fn cut(&mut self, a: &[u32], b: &[u32]) -> anyhow::Result<()> {
        for &x in a {
            for &y in b {
                if x == y {
                    continue;
                }
                let pair = (x.min(y), x.max(y));
                if !self.cuts.insert(pair) {
                    continue;
                }
                let (hx, hy) = (self.host(pair.0)?.clone(), self.host(pair.1)?.clone());
                in_ns(&hx.namespace, &["ip", "route", "add", "blackhole", &format!("{}/32", hy.ip)])?;
                in_ns(&hy.namespace, &["ip", "route", "add", "blackhole", &format!("{}/32", hx.ip)])?;
            }
        }
        Ok(())
    }

    /// Puts every node in its group; nodes of different groups cannot talk.
    pub fn partition(&mut self, groups: &[Vec<u32>]) -> anyhow::Result<()> {
        for (i, a) in groups.iter().enumerate() {
            for b in &groups[i + 1..] {
                self.cut(a, b)?;
            }
        }
        Ok(())
    }

    /// Every node sees only the nodes in `sees[node]` (a ring of majorities,
    /// say); links are cut where either side does not see the other.
    pub fn restrict(&mut self, sees: &[(u32, Vec<u32>)]) -> anyhow::Result<()> {
        let nodes: Vec<u32> = self.hosts.iter().map(|h| h.node).collect();
        for (node, visible) in sees {
            let hidden: Vec<u32> = nodes.iter().copied().filter(|n| n != node && !visible.contains(n)).collect();
            self.cut(&[*node], &hidden)?;
        }
        Ok(())
    }

    /// Removes every cut.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        let cuts = std::mem::take(&mut self.cuts);
        for (x, y) in cuts {
            let (hx, hy) = (self.host(x)?.clone(), self.host(y)?.clone());
            in_ns(&hx.namespace, &["ip", "route", "del", "blackhole", &format!("{}/32", hy.ip)])?;
            in_ns(&hy.namespace, &["ip", "route", "del", "blackhole", &format!("{}/32", hx.ip)])?;
        }
        Ok(())
    }

    /// The bridge's subnet (for the record).
    pub fn subnet(&self) -> &str {
        &self.subnet
    }

    fn remove_all(&mut self, nodes: u32) {
        for node in 1..=nodes.max(self.hosts.len() as u32) {
            let _ = run(&["ip", "netns", "del", &format!("{}n{node}", self.prefix)]);
        }
        if self.forward_rule {
            let _ = run(&["iptables", "-D", "FORWARD", "-i", &self.bridge, "-o", &self.bridge, "-j", "ACCEPT"]);
            self.forward_rule = false;
        }
        let _ = run(&["ip", "link", "del", &self.bridge]);
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth end, and with it the pair.
        let n = self.hosts.len() as u32;
        self.remove_all(n);
    }
}
