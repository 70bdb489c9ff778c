//! How a node's own client (its group coordinator, which reads and writes
//! other partitions) reaches the cluster: itself in-process, its peers
//! over their cluster listeners. Neither path passes a client listener, so
//! the coordinator needs no client TLS trust or credentials of its own,
//! and a peer that receives its requests knows, by its certificate, that a
//! node sent them.

use std::sync::Arc;

use tonic::transport::Channel;

use crate::replication::Replication;

pub(crate) struct NodeDialer {
    replication: Arc<Replication>,
    /// In-process channel to this node's own services.
    local: Channel,
}

impl NodeDialer {
    pub(crate) fn new(replication: Arc<Replication>, local: Channel) -> Self {
        Self { replication, local }
    }
}

impl strata_client::Dialer for NodeDialer {
    fn channel(&self, addr: &str) -> Option<Channel> {
        let node = self.replication.node_at(addr)?;
        if node == self.replication.node_id() { Some(self.local.clone()) } else { self.replication.peer_channel(node) }
    }
}
