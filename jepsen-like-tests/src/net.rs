//! The hosts of a run, each with its own address on a private network, so a
//! node can be cut off from another without touching the rest. Two kinds:
//! Docker containers from the project's own Debian image (see
//! [`crate::image`]) on a private Docker network, or, where Docker is not
//! available, Linux network namespaces on a private bridge. The harness and
//! its clients stay on the host and reach every node over that network.
//!
//! A cut is a pair of blackhole routes (one on each host), so traffic
//! between the two is dropped both ways and open connections time out, as
//! on a real network partition. Needs root and `ip` (iproute2).

use std::collections::BTreeSet;
use std::process::Command;

use anyhow::{Context, bail};

/// What the hosts are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Docker containers (image [`crate::image::IMAGE`]).
    Docker,
    /// Network namespaces.
    Netns,
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "docker" => Ok(Self::Docker),
            "netns" => Ok(Self::Netns),
            other => Err(format!("unknown host kind '{other}' (known: docker, netns)")),
        }
    }
}

/// One node's host.
#[derive(Debug, Clone)]
pub struct Host {
    /// Node id, from 1.
    pub node: u32,
    pub kind: Kind,
    /// The namespace or the container.
    pub name: String,
    pub ip: String,
}

impl Host {
    /// The command line that runs `args` on this host.
    pub fn exec(&self, args: &[&str]) -> Vec<String> {
        let prefix: &[&str] = match self.kind {
            Kind::Netns => &["ip", "netns", "exec"],
            Kind::Docker => &["docker", "exec"],
        };
        prefix.iter().copied().chain([self.name.as_str()]).chain(args.iter().copied()).map(str::to_owned).collect()
    }
}

/// The private network of a run; torn down on drop.
#[derive(Debug)]
pub struct Network {
    pub hosts: Vec<Host>,
    kind: Kind,
    /// `sj<tag>`: names of the bridge or Docker network (`b`), namespaces or
    /// containers (`n<i>`), veths (`v<i>`).
    prefix: String,
    bridge: String,
    subnet: String,
    /// Cut pairs (a < b) currently in place.
    cuts: BTreeSet<(u32, u32)>,
    forward_rule: bool,
}

pub(crate) fn run(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("cannot run {}", args[0]))?;
    if !out.status.success() {
        bail!("`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Runs a command and returns what it printed, trimmed.
pub(crate) fn output(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("cannot run {}", args[0]))?;
    if !out.status.success() {
        bail!("`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn on(host: &Host, args: &[&str]) -> anyhow::Result<()> {
    let all = host.exec(args);
    run(&all.iter().map(String::as_str).collect::<Vec<_>>())
}

fn in_ns(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut all = vec!["ip", "netns", "exec", ns];
    all.extend_from_slice(args);
    run(&all)
}

/// True when a Docker engine answers.
pub fn docker_available() -> bool {
    Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).output().is_ok_and(|o| o.status.success())
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
    pub fn create(kind: Kind, nodes: u32, tag: u16) -> anyhow::Result<Self> {
        if let Some(why) = unavailable() {
            bail!("cannot create the test hosts: {why}");
        }
        if kind == Kind::Docker && !docker_available() {
            bail!("cannot create the test hosts: no Docker engine answers (`docker info`); use --hosts netns");
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
            kind,
            prefix,
            bridge: bridge.clone(),
            subnet,
            cuts: BTreeSet::new(),
            forward_rule: false,
        };
        // Leftovers of an earlier run with the same tag (killed before its teardown).
        network.remove_all(nodes);
        if kind == Kind::Docker {
            run(&["docker", "network", "create", "--driver", "bridge", "--subnet", &network.subnet, &bridge])?;
            for node in 1..=nodes {
                let name = format!("{}n{node}", network.prefix);
                network.hosts.push(Host { node, kind, name, ip: format!("10.213.{net}.{}", 10 + node) });
            }
            return Ok(network);
        }
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
            network.hosts.push(Host { node, kind, name: ns.clone(), ip: ip.clone() });
            run(&["ip", "link", "add", &outside, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            run(&["ip", "link", "set", &outside, "master", &bridge])?;
            run(&["ip", "link", "set", &outside, "up"])?;
            in_ns(&ns, &["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            in_ns(&ns, &["ip", "link", "set", "eth0", "up"])?;
            in_ns(&ns, &["ip", "link", "set", "lo", "up"])?;
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
                on(&hx, &["ip", "route", "add", "blackhole", &format!("{}/32", hy.ip)])?;
                on(&hy, &["ip", "route", "add", "blackhole", &format!("{}/32", hx.ip)])?;
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

    /// Checks that every cut is in place: on both hosts of each cut pair,
    /// the kernel holds the blackhole route to the other. Returns what was
    /// seen; an error when no link is cut or a route is missing.
    pub fn verify_cuts(&self) -> anyhow::Result<String> {
        if self.cuts.is_empty() {
            bail!("no link is cut");
        }
        let mut routes = std::collections::BTreeMap::new();
        for host in &self.hosts {
            let all = host.exec(&["ip", "route", "show", "type", "blackhole"]);
            let listed = output(&all.iter().map(String::as_str).collect::<Vec<_>>())?;
            let ips: BTreeSet<String> =
                listed.lines().filter_map(|l| l.split_whitespace().nth(1)).map(str::to_owned).collect();
            routes.insert(host.node, ips);
        }
        for &(x, y) in &self.cuts {
            for (from, to) in [(x, y), (y, x)] {
                let ip = &self.host(to)?.ip;
                if !routes.get(&from).is_some_and(|r| r.contains(ip)) {
                    bail!("node {from} has no blackhole route to node {to} ({ip})");
                }
            }
        }
        Ok(format!("{} links cut, {} blackhole routes in place", self.cuts.len(), 2 * self.cuts.len()))
    }

    /// Removes every cut.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        let cuts = std::mem::take(&mut self.cuts);
        for (x, y) in cuts {
            let (hx, hy) = (self.host(x)?.clone(), self.host(y)?.clone());
            on(&hx, &["ip", "route", "del", "blackhole", &format!("{}/32", hy.ip)])?;
            on(&hy, &["ip", "route", "del", "blackhole", &format!("{}/32", hx.ip)])?;
        }
        Ok(())
    }

    /// The network's subnet (for the record).
    pub fn subnet(&self) -> &str {
        &self.subnet
    }

    /// The bridge or Docker network the hosts are on.
    pub fn network_name(&self) -> &str {
        &self.bridge
    }

    fn remove_all(&mut self, nodes: u32) {
        for node in 1..=nodes.max(self.hosts.len() as u32) {
            let name = format!("{}n{node}", self.prefix);
            match self.kind {
                Kind::Netns => drop(run(&["ip", "netns", "del", &name])),
                Kind::Docker => drop(run(&["docker", "rm", "-f", &name])),
            }
        }
        if self.forward_rule {
            let _ = run(&["iptables", "-D", "FORWARD", "-i", &self.bridge, "-o", &self.bridge, "-j", "ACCEPT"]);
            self.forward_rule = false;
        }
        match self.kind {
            Kind::Netns => drop(run(&["ip", "link", "del", &self.bridge])),
            Kind::Docker => drop(run(&["docker", "network", "rm", &self.bridge])),
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth end, and with it the pair;
        // containers go before their network.
        let n = self.hosts.len() as u32;
        self.remove_all(n);
    }
}
